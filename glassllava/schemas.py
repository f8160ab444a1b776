"""The Arrow schemas of every stage's tables, in one place.

Each stage writes Parquet files whose schema is one of the constants below, and every
row carries the content hash of the paper it came from (``paper_sha``, the sha256 of the
PDF bytes). ``write_table`` refuses a table that does not match its schema, so a broken
contract fails at the producer, not three stages later.

Coordinates are PDF points with a top-left origin, ``[x0, top, x1, bottom]`` (pdfplumber's
convention); pages are 1-based.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from glassllava.files import atomic_write_bytes
from glassllava.textnorm import strip_table_controls

BOX = pa.list_(pa.float64())  # [x0, top, x1, bottom]; fixed-size lists with nulls do not round-trip Parquet
TIMESTAMP = pa.timestamp("s", tz="UTC")

# ---- stage ingest -------------------------------------------------------------------
PAPERS_SCHEMA = pa.schema(
    [
        pa.field("paper_sha", pa.string(), nullable=False),  # sha256 of the PDF bytes
        pa.field("pdf_path", pa.string(), nullable=False),  # data/raw/pdfs/<sha>.pdf
        pa.field("source", pa.string(), nullable=False),  # where it first came from (path or URL)
        pa.field("source_kind", pa.string(), nullable=False),  # inbox | url | generated
        pa.field("title", pa.string()),
        pa.field("doi", pa.string()),
        pa.field("n_pages", pa.int32(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("n_columns", pa.int8()),  # dominant text column count (1 or 2)
        pa.field("first_seen", TIMESTAMP, nullable=False),
        pa.field("parser_version", pa.string(), nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_sha", pa.string(), nullable=False),  # sha256 of the bytes (of b"" if none)
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_kind", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # one of ingest.QUARANTINE_REASONS
        pa.field("detail", pa.string(), nullable=False),
        pa.field("kept_at", pa.string()),  # where the bytes are kept (never deleted)
        pa.field("seen_at", TIMESTAMP, nullable=False),
        # ingest: whether the input is still among the sources; a record outlives its file (False), so the
        # reason a hash-named copy in quarantine/ was kept is never lost. Null where the stage does not track it.
        pa.field("present", pa.bool_()),
    ]
)

PARAGRAPHS_SCHEMA = pa.schema(
    [
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("paragraph_index", pa.int32(), nullable=False),  # reading order within the paper
        pa.field("page", pa.int32(), nullable=False),
        pa.field("column", pa.int8(), nullable=False),  # 0 = full width, 1 = left, 2 = right
        pa.field("kind", pa.string(), nullable=False),  # heading | paragraph | caption
        pa.field("section", pa.string()),  # the heading the paragraph falls under
        pa.field("text", pa.string(), nullable=False),
        pa.field("bbox", BOX, nullable=False),
    ]
)

CITATIONS_SCHEMA = pa.schema(
    [
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("paragraph_index", pa.int32(), nullable=False),
        pa.field("figure_label", pa.string(), nullable=False),  # "3"
        pa.field("panel_labels", pa.list_(pa.string()), nullable=False),  # ["b", "c"] or []
        pa.field("mention", pa.string(), nullable=False),  # the citing text, e.g. "Fig. 3b and c"
    ]
)

# ---- stage figures ------------------------------------------------------------------
FIGURES_SCHEMA = pa.schema(
    [
        pa.field("figure_id", pa.string(), nullable=False),  # <paper_sha[:16]>-fig<label>
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("figure_bbox", BOX),  # null when no region was found for the caption
        pa.field("caption", pa.string(), nullable=False),
        pa.field("caption_bbox", BOX, nullable=False),
        pa.field("caption_position", pa.string(), nullable=False),  # below | above | side | none
        pa.field("panel_labels", pa.list_(pa.string()), nullable=False),
        pa.field("image_path", pa.string()),  # PNG stored by content hash
        pa.field("image_sha", pa.string()),
        pa.field("is_sem", pa.bool_(), nullable=False),  # any panel is an SEM micrograph
        pa.field("sem_score", pa.float32(), nullable=False),
        pa.field("context", pa.list_(pa.string()), nullable=False),  # paragraphs citing the figure
        pa.field("context_paragraphs", pa.list_(pa.int32()), nullable=False),
        pa.field("layout_backend", pa.string(), nullable=False),
        pa.field("extractor_version", pa.string(), nullable=False),
    ]
)

PANELS_SCHEMA = pa.schema(
    [
        pa.field("panel_id", pa.string(), nullable=False),  # <figure_id>-<label or index>
        pa.field("figure_id", pa.string(), nullable=False),
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("panel_label", pa.string()),  # "a", "b", ... or null when the figure shows none
        pa.field("panel_index", pa.int32(), nullable=False),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("bbox", BOX, nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha", pa.string(), nullable=False),
        pa.field("width_px", pa.int32(), nullable=False),
        pa.field("height_px", pa.int32(), nullable=False),
        pa.field("is_sem", pa.bool_(), nullable=False),
        pa.field("sem_score", pa.float32(), nullable=False),
        pa.field("context", pa.list_(pa.string()), nullable=False),  # paragraphs citing this panel or the figure
    ]
)


# ---- stage qa -----------------------------------------------------------------------
EVIDENCE = pa.struct([pa.field("source", pa.string()), pa.field("text", pa.string())])  # source: caption | paragraph:<i>

QA_SCHEMA = pa.schema(
    [
        pa.field("qa_id", pa.string(), nullable=False),  # sha256 of panel, generator and question, first 20 hex
        pa.field("split", pa.string(), nullable=False),  # train | eval (by paper, never by image)
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("figure_id", pa.string(), nullable=False),
        pa.field("panel_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("question_type", pa.string(), nullable=False),  # description | feature_identification | defect_detection | complex_reasoning
        pa.field("complexity", pa.string(), nullable=False),  # simple | complex
        pa.field("context_level", pa.string(), nullable=False),  # none | low | moderate | high
        pa.field("context_types", pa.list_(pa.string()), nullable=False),  # material, composition, processing, imaging, aim
        pa.field("features", pa.list_(pa.string()), nullable=False),  # reference features (glassllava.qa_rules.FEATURES)
        pa.field("defect_present", pa.bool_(), nullable=False),
        pa.field("defect_types", pa.list_(pa.string()), nullable=False),
        pa.field("evidence", pa.list_(EVIDENCE), nullable=False),  # the caption / paragraph sentences behind the answer
        pa.field("generator", pa.string(), nullable=False),  # "offline-rules/1" or "llm:<model>"
        pa.field("prompt_version", pa.string(), nullable=False),  # "qa_v1@<sha12>" ("" for offline)
        pa.field("request_key", pa.string(), nullable=False),  # the cache file the record came from ("" offline)
    ]
)

QA_REJECTED_SCHEMA = pa.schema(
    [
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("panel_id", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # one of qa.REJECT_REASONS
        pa.field("detail", pa.string(), nullable=False),
        pa.field("request_key", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),  # the offending record or reply, truncated
    ]
)


# ---- stage dataset ------------------------------------------------------------------
TURN = pa.struct(
    [
        pa.field("qa_id", pa.string()),  # the QA record this turn came from ("" for an alignment caption)
        pa.field("question", pa.string()),  # "" for an alignment caption: the image alone is the prompt
        pa.field("answer", pa.string()),
        pa.field("question_type", pa.string()),  # as in QA_SCHEMA; "caption" for the alignment set
        pa.field("context_level", pa.string()),  # none | low | moderate | high ("none" for captions)
        pa.field("defect_present", pa.bool_()),  # null for captions
    ]
)

CONVERSATIONS_SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),  # sha256 of image and turns, first 20 hex
        pa.field("split", pa.string(), nullable=False),  # train | eval | align
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("figure_id", pa.string(), nullable=False),
        pa.field("panel_id", pa.string(), nullable=False),
        pa.field("image_sha", pa.string(), nullable=False),  # sha256 of the PNG bytes
        pa.field("image_path", pa.string(), nullable=False),  # data/dataset/images/<image_sha>.png, stored once
        pa.field("turns", pa.list_(TURN), nullable=False),  # in order; the image goes with the first question
    ]
)

DATASET_SKIPPED_SCHEMA = pa.schema(
    [
        pa.field("qa_id", pa.string(), nullable=False),
        pa.field("panel_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # unreadable_image | tiny_image | missing_image
        pa.field("detail", pa.string(), nullable=False),
    ]
)


class SchemaMismatch(ValueError):
    """A table does not match the schema its stage promises."""


def conform(table: pa.Table, schema: pa.Schema, name: str = "table") -> pa.Table:
    """Return ``table`` cast to ``schema``; raise ``SchemaMismatch`` naming missing/extra columns."""
    have, want = set(table.column_names), set(schema.names)
    if have != want:
        raise SchemaMismatch(
            f"{name}: missing columns {sorted(want - have)}, unexpected columns {sorted(have - want)}"
        )
    table = table.select(schema.names)
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
        raise SchemaMismatch(f"{name}: {e}") from e
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaMismatch(f"{name}: column {field.name!r} has nulls but is not nullable")
    return table


def table_from_rows(rows: list[dict], schema: pa.Schema, name: str = "table") -> pa.Table:
    if not rows:
        return schema.empty_table()
    return conform(pa.Table.from_pylist(rows, schema=schema), schema, name)


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema) -> Path:
    """Validate ``table`` against ``schema`` and write it as Parquet, atomically.

    The last guard of the text invariant: no string written keeps a control character other
    than newline and tab (``textnorm.strip_table_controls``)."""
    table = strip_table_controls(conform(table, schema, str(path)))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read a Parquet table and check it against ``schema``."""
    return conform(pq.read_table(path), schema, str(path))


# ---- stage evaluate -----------------------------------------------------------------
# One row per (system row, eval question): every row answers the same questions about the same images.
EVAL_ANSWERS_SCHEMA = pa.schema(
    [
        pa.field("row", pa.string(), nullable=False),  # model | blind | base | majority | vision:<model id>
        pa.field("qa_id", pa.string(), nullable=False),  # the eval QA record (QA_SCHEMA) asked
        pa.field("paper_sha", pa.string(), nullable=False),
        pa.field("panel_id", pa.string(), nullable=False),
        pa.field("image_sha", pa.string(), nullable=False),  # the unit the intervals resample
        pa.field("question", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=False),  # the QA record's answer
        pa.field("question_type", pa.string(), nullable=False),
        pa.field("complexity", pa.string(), nullable=False),  # simple | complex
        pa.field("context_level", pa.string(), nullable=False),
        pa.field("context_types", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(pa.string()), nullable=False),  # gold features of the QA record
        pa.field("defect_present", pa.bool_(), nullable=False),  # gold defect label
        pa.field("defect_types", pa.list_(pa.string()), nullable=False),
        pa.field("answer", pa.string(), nullable=False),  # what the row answered ("" when it could not)
        pa.field("new_tokens", pa.int32(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)

# One row per (system row, eval question, metric). A judgment the judge could not give (a reply that is
# not valid JSON, truncated, out of range) has ok = false and score null: counted as a failure, never as 0.
EVAL_JUDGMENTS_SCHEMA = pa.schema(
    [
        pa.field("row", pa.string(), nullable=False),
        pa.field("qa_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),  # quality | relative | features | defect | proxy_* | truth_*
        pa.field("judge", pa.string(), nullable=False),  # "llm:<model>@<prompt sha12>" or "offline"
        pa.field("score", pa.float64()),  # quality 0-100, relative 0-100+, features 1-4, defect 0/1, proxies 0-1
        pa.field("ok", pa.bool_(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),  # JSON: justification, matched/missed/hallucinated, claim ...
        pa.field("request_key", pa.string(), nullable=False),  # the cache file behind an LLM judgment ("" offline)
    ]
)
