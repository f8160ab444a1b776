"""Stage ``dataset``: QA records and panel captions as LLaVA-style training conversations.

Inputs: ``qa/train.parquet`` and ``qa/eval.parquet`` (``schemas.QA_SCHEMA``), ``figures/panels.parquet`` and
``figures/figures.parquet`` (the SEM panels and their captions, for the alignment set). Outputs under ``dataset/``:

- ``images/<image_sha>.png``: every panel image a conversation uses, stored once by content hash (a hard link
  to the figures stage's file where the file system allows, else a copy), its sha256 checked. Every stage
  replaces files atomically and never writes into one, so a link cannot change under the dataset; each run
  hashes the sources again all the same;
- ``train-00000.parquet``, ``eval-00000.parquet``, ``align-00000.parquet`` ... (``schemas.CONVERSATIONS_SCHEMA``,
  ``dataset.shard_rows`` conversations per shard): the training data.
  train: the questions about one panel as multi-turn conversations of at most ``max_turns`` turns (or one
  conversation per record); eval: always one question per conversation; align (stage 1, projector alignment):
  one conversation per SEM panel image of the train papers, the image alone as prompt and the panel's caption
  as answer, as LLaVA's ``plain`` template;
- ``llava/{train,eval,align}.json``: the same conversations in LLaVA's JSON format, for interchange;
- ``skipped.parquet`` (``schemas.DATASET_SKIPPED_SCHEMA``): QA records and panels left out, with the reason;
- ``report.json``: counts per split, what was skipped, the leakage check and a fingerprint of the shards.

A paper or an image on both sides of the train/eval split is a ``LeakageError``, and an empty training set an
``EmptyDatasetError``; both are raised before anything is written. Same inputs, same bytes: rows are sorted,
files carry no timestamps, and a file whose content would not change is not rewritten (``dvc repro`` stays up
to date). Paper text (questions, answers, captions) is untrusted: it goes into Parquet and JSON as data only,
and a literal ``<image>`` in it, which LLaVA's preprocessing would read as an image placeholder, is defused.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from glassllava.files import atomic_write_bytes, sha256_bytes, sha256_file, sha256_json
from glassllava.params import CONTEXT_LEVELS, QUESTION_TYPES, DataLayout, DatasetParams
from glassllava.schemas import (
    CONVERSATIONS_SCHEMA,
    DATASET_SKIPPED_SCHEMA,
    QA_SCHEMA,
    SchemaMismatch,
    read_table,
    table_from_rows,
    write_table,
)
from glassllava.sem import caption_for_panel

log = logging.getLogger(__name__)

SPLITS = ("train", "eval", "align")
SKIP_REASONS = (
    "missing_image",  # the panel's PNG is not where the record says
    "hash_mismatch",  # its bytes do not hash to the record's image_sha
    "unreadable_image",  # PIL cannot decode it
    "tiny_image",  # smaller than dataset.min_image_px on a side
    "empty_caption",  # alignment set: the panel's figure has no caption text
)
IMAGE_TAG = "<image>"  # LLaVA's image placeholder: only in the first human turn
_PANEL_COLUMNS = ["panel_id", "figure_id", "paper_sha", "panel_label", "image_path", "image_sha", "is_sem"]
_LEVEL_ORDER = {level: i for i, level in enumerate(CONTEXT_LEVELS)}
_TYPE_ORDER = {qtype: i for i, qtype in enumerate(QUESTION_TYPES)}


class DatasetError(ValueError):
    """The dataset stage cannot build a dataset from its inputs."""


class MissingInputError(DatasetError):
    """An input table is missing: an earlier stage has not run."""


class LeakageError(DatasetError):
    """A paper or an image is on both sides of the train/eval split."""


class EmptyDatasetError(DatasetError):
    """Nothing to train on: no QA records at all, or every training record was skipped."""


# ---- inputs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    records: dict[str, list[dict]]  # train | eval -> QA records
    panels: list[dict]  # every panel of figures/panels.parquet (_PANEL_COLUMNS)
    captions: dict[str, str]  # figure_id -> caption
    labelled_panels: dict[str, int]  # figure_id -> how many of its panels carry a letter


def load_inputs(layout: DataLayout) -> Inputs:
    """The QA records of both splits, and the panels and captions of the figures stage."""
    records = {}
    for split in ("train", "eval"):
        path = layout.qa / f"{split}.parquet"
        if not path.exists():
            raise MissingInputError(f"{path} not found: run the qa stage first (dvc repro qa)")
        records[split] = read_table(path, QA_SCHEMA).to_pylist()
    panels_path, figures_path = layout.figures / "panels.parquet", layout.figures / "figures.parquet"
    for path in (panels_path, figures_path):
        if not path.exists():
            raise MissingInputError(f"{path} not found: run the figures stage first (dvc repro figures)")
    panels = pq.read_table(panels_path, columns=_PANEL_COLUMNS).to_pylist()
    captions = {f["figure_id"]: f["caption"] for f in pq.read_table(figures_path, columns=["figure_id", "caption"]).to_pylist()}
    labelled = Counter(p["figure_id"] for p in panels if p["panel_label"])
    return Inputs(records, panels, captions, dict(labelled))


def alignment_panels(inputs: Inputs) -> list[dict]:
    """The SEM panels of the train papers, one per distinct image (the first by panel id)."""
    train_papers = {r["paper_sha"] for r in inputs.records["train"]}
    seen: set[str] = set()
    out = []
    for panel in sorted(inputs.panels, key=lambda p: p["panel_id"]):
        if panel["is_sem"] and panel["paper_sha"] in train_papers and panel["image_sha"] not in seen:
            seen.add(panel["image_sha"])
            out.append(panel)
    return out


def panel_caption(inputs: Inputs, panel: dict) -> str:
    """The caption of one panel, whitespace-normalised: its own clause (and the caption's lead) when the figure
    has several labelled panels (``sem.caption_for_panel``), else the whole caption."""
    caption = inputs.captions.get(panel["figure_id"], "")
    if panel["panel_label"] and inputs.labelled_panels.get(panel["figure_id"], 0) > 1:
        caption = caption_for_panel(caption, panel["panel_label"])
    return _defuse(" ".join(caption.split()).strip(" ;,"))


def _defuse(text: str) -> str:
    """Paper text that spells LLaVA's image placeholder would add an image slot to the prompt."""
    return text.replace(IMAGE_TAG, "image")


# ---- checks --------------------------------------------------------------------------------
def check_not_empty(inputs: Inputs, layout: DataLayout) -> None:
    """Raise ``EmptyDatasetError`` when there is no QA record, or none from a training paper."""
    train, evals = inputs.records["train"], inputs.records["eval"]
    if not train and not evals:
        sem = sum(bool(p["is_sem"]) for p in inputs.panels)
        hint = (
            "add papers with SEM micrographs (corpus.sources) or lower figures.sem_threshold"
            if sem == 0
            else f"run the qa stage (dvc repro qa) and see {layout.qa / 'rejected.parquet'} for the records it refused"
        )
        raise EmptyDatasetError(
            f"no SEM panel had QA records ({layout.qa}/train.parquet and eval.parquet are empty): "
            f"the figures stage found {sem} SEM panels among {len(inputs.panels)} panels; {hint}"
        )
    if not train:
        papers = len({r["paper_sha"] for r in evals})
        raise EmptyDatasetError(
            f"no training QA records: all {len(evals)} records come from the {papers} held-out papers of the eval split; "
            "add papers or lower qa.eval_fraction"
        )


def check_leakage(records: dict[str, list[dict]], align: list[dict]) -> dict:
    """Raise ``LeakageError`` when a paper or an image is in train (or align) and in eval; else the check's result."""
    eval_papers, eval_images = {r["paper_sha"] for r in records["eval"]}, {r["image_sha"] for r in records["eval"]}
    train_papers = {r["paper_sha"] for r in records["train"]} | {p["paper_sha"] for p in align}
    papers = sorted(train_papers & eval_papers)
    images = sorted({r["image_sha"] for r in records["train"]} & eval_images)
    align_images = sorted({p["image_sha"] for p in align} & eval_images)
    if papers or images or align_images:
        raise LeakageError(
            f"train/eval leakage: {len(papers)} papers in both splits [{_listing(papers)}]; "
            f"{len(images)} images in train and eval [{_listing(images)}]; {len(align_images)} alignment images in eval "
            f"[{_listing(align_images)}]; the qa stage splits by paper: re-run it (dvc repro qa), and drop duplicate figures"
        )
    return {"ok": True, "papers_in_both": 0, "images_in_both": 0, "align_images_in_eval": 0}


def _listing(shas: list[str], limit: int = 10) -> str:
    shown = ", ".join(s[:16] for s in shas[:limit])
    return shown + (f" and {len(shas) - limit} more" if len(shas) > limit else "")


@dataclass(frozen=True)
class ImageCheck:
    source: Path | None  # the file found (None: missing)
    reason: str = ""  # "" when usable, else one of SKIP_REASONS
    detail: str = ""


def check_image(image_path: str, image_sha: str, layout: DataLayout, min_px: int) -> ImageCheck:
    """Whether a panel image can go into the dataset: found, its hash right, decodable, and not tiny."""
    source = resolve_image(image_path, layout)
    if source is None:
        return ImageCheck(None, "missing_image", f"{image_path} not found")
    data = source.read_bytes()
    got = sha256_bytes(data)
    if got != image_sha:
        return ImageCheck(source, "hash_mismatch", f"sha256 of {image_path} is {got[:16]}..., the record says {image_sha[:16]}...")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height = im.size
    except Exception as e:  # noqa: BLE001 - untrusted bytes: PIL raises many kinds (OSError, SyntaxError, struct.error ...)
        return ImageCheck(source, "unreadable_image", f"PIL cannot decode {image_path}: {type(e).__name__}: {e}")
    if min(width, height) < min_px:
        return ImageCheck(source, "tiny_image", f"{width}x{height} px, smaller than dataset.min_image_px={min_px}")
    return ImageCheck(source)


def resolve_image(image_path: str, layout: DataLayout) -> Path | None:
    """The file of a recorded image path. Stages record paths relative to the directory they ran in, the one
    holding the data root, so a relative path is also tried from the data root's parent."""
    path = Path(image_path)
    candidates = [path] if path.is_absolute() else [path, layout.root.parent / path]
    return next((p for p in candidates if p.is_file()), None)


def check_images(items: list[dict], layout: DataLayout, min_px: int) -> dict[tuple[str, str], ImageCheck]:
    """One check per distinct (image_path, image_sha) of QA records and panels."""
    keys = sorted({_image_key(item) for item in items})
    return {key: check_image(*key, layout, min_px) for key in keys}


def _image_key(item: dict) -> tuple[str, str]:
    return item["image_path"], item["image_sha"]


# ---- conversations ---------------------------------------------------------------------------
def _turn(record: dict) -> dict:
    return {
        "qa_id": record["qa_id"],
        "question": _defuse(record["question"]),
        "answer": _defuse(record["answer"]),
        "question_type": record["question_type"],
        "context_level": record["context_level"],
        "defect_present": record["defect_present"],
    }


def _conversation(split: str, item: dict, turns: list[dict], layout: DataLayout) -> dict:
    sha = item["image_sha"]
    body = {"split": split, "image_sha": sha, "panel_id": item["panel_id"], "turns": turns}
    return {
        "conversation_id": sha256_json(body)[:20],
        "split": split,
        "paper_sha": item["paper_sha"],
        "figure_id": item["figure_id"],
        "panel_id": item["panel_id"],
        "image_sha": sha,
        "image_path": str(layout.dataset / "images" / f"{sha}.png"),
        "turns": turns,
    }


def _question_order(record: dict) -> tuple:
    """From no context to high context, then by question type: the order of the qa slots."""
    return _LEVEL_ORDER.get(record["context_level"], len(CONTEXT_LEVELS)), _TYPE_ORDER.get(record["question_type"], 99), record["qa_id"]


def turn_order(records: list[dict], params: DatasetParams) -> list[dict]:
    """The questions about one panel in conversation order. Shuffled by a seeded hash of each qa_id, so the
    order depends on the seed and the record alone, not on Python's RNG or on other panels."""
    if params.shuffle_turns:
        return sorted(records, key=lambda r: sha256_bytes(f"{params.seed}:{r['qa_id']}".encode()))
    return sorted(records, key=_question_order)


def balanced_chunks(items: list, size: int) -> list[list]:
    """``items`` in order, cut into as few pieces of at most ``size`` as possible, of near-equal length (8 by 3: 3, 3, 2)."""
    if not items:
        return []
    n = math.ceil(len(items) / size)
    base, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + base + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _by_panel(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["paper_sha"], r["panel_id"])].append(r)
    return dict(sorted(groups.items()))


def train_conversations(records: list[dict], params: DatasetParams, layout: DataLayout) -> list[dict]:
    """Multi-turn: each panel's questions, in ``turn_order``, cut into conversations of at most ``max_turns``;
    else one conversation per QA record."""
    out = []
    for recs in _by_panel(records).values():
        if not params.multi_turn:
            out += [_conversation("train", r, [_turn(r)], layout) for r in sorted(recs, key=_question_order)]
            continue
        for chunk in balanced_chunks(turn_order(recs, params), params.max_turns):
            out.append(_conversation("train", chunk[0], [_turn(r) for r in chunk], layout))
    return out


def eval_conversations(records: list[dict], layout: DataLayout) -> list[dict]:
    """One conversation per QA record: each evaluation question is asked alone."""
    return [_conversation("eval", r, [_turn(r)], layout) for recs in _by_panel(records).values() for r in sorted(recs, key=_question_order)]


def align_conversations(panels: list[dict], inputs: Inputs, layout: DataLayout) -> list[dict]:
    """One single-turn conversation per panel: no question (the image is the prompt), the caption as answer."""
    out = []
    for panel in sorted(panels, key=lambda p: (p["paper_sha"], p["panel_id"])):
        turn = {"qa_id": "", "question": "", "answer": panel_caption(inputs, panel), "question_type": "caption",
                "context_level": "none", "defect_present": None}
        out.append(_conversation("align", panel, [turn], layout))
    return out


def llava_records(conversations: list[dict]) -> list[dict]:
    """LLaVA's conversation format; ``<image>`` opens the first human turn only, images are relative to dataset/."""
    out = []
    for c in conversations:
        turns = []
        for i, t in enumerate(c["turns"]):
            human = (IMAGE_TAG + ("\n" + t["question"] if t["question"] else "")) if i == 0 else t["question"]
            turns += [{"from": "human", "value": human}, {"from": "gpt", "value": t["answer"]}]
        out.append({"id": c["conversation_id"], "image": f"images/{c['image_sha']}.png", "conversations": turns})
    return out


# ---- the plan: everything decided before a byte is written -----------------------------------
@dataclass
class DatasetPlan:
    conversations: dict[str, list[dict]]  # train | eval | align (no align when alignment_set is off) -> rows
    images: dict[str, Path]  # image_sha -> the checked file to store
    skipped: list[dict]  # DATASET_SKIPPED_SCHEMA rows
    inputs: dict[str, int]  # QA records per split, alignment panel candidates
    leakage: dict
    generators: list[str]  # who wrote the QA records ("offline-rules/1", "llm:gpt-4o")
    image_tags_defused: int  # questions, answers and captions that spelled "<image>"


def plan_dataset(params: DatasetParams, layout: DataLayout) -> DatasetPlan:
    """Read the inputs, check them and build every conversation; raises ``DatasetError`` and writes nothing."""
    inputs = load_inputs(layout)
    check_not_empty(inputs, layout)
    align = alignment_panels(inputs) if params.alignment_set else []
    leakage = check_leakage(inputs.records, align)
    records = inputs.records["train"] + inputs.records["eval"]
    checks = check_images(records + align, layout, params.min_image_px)

    def usable(items: list[dict]) -> list[dict]:
        return [x for x in items if not checks[_image_key(x)].reason]

    captioned = [p for p in usable(align) if panel_caption(inputs, p)]
    conversations = {
        "train": train_conversations(usable(inputs.records["train"]), params, layout),
        "eval": eval_conversations(usable(inputs.records["eval"]), layout),
    }
    if params.alignment_set:
        conversations["align"] = align_conversations(captioned, inputs, layout)
    skipped = skipped_rows(records, align, checks)
    captioned_ids = {p["panel_id"] for p in captioned}
    uncaptioned = [p for p in usable(align) if p["panel_id"] not in captioned_ids]
    skipped += [_skip_row(p, "", "empty_caption", f"figure {p['figure_id']} has no caption text") for p in uncaptioned]
    if not conversations["train"]:
        raise EmptyDatasetError(_all_skipped_message(inputs.records["train"], checks))
    texts = [t for r in records for t in (r["question"], r["answer"])] + [inputs.captions.get(p["figure_id"], "") for p in captioned]
    return DatasetPlan(
        conversations=conversations,
        images={x["image_sha"]: checks[_image_key(x)].source for x in usable(records) + captioned},
        skipped=sorted(skipped, key=lambda r: (r["reason"], r["panel_id"], r["qa_id"])),
        inputs={"train": len(inputs.records["train"]), "eval": len(inputs.records["eval"]), "align": len(align)},
        leakage=leakage,
        generators=sorted({r["generator"] for r in records}),
        image_tags_defused=sum(IMAGE_TAG in t for t in texts),
    )


def _skip_row(item: dict, qa_id: str, reason: str, detail: str) -> dict:
    return {"qa_id": qa_id, "panel_id": item["panel_id"], "image_path": item["image_path"], "reason": reason, "detail": detail}


def skipped_rows(records: list[dict], align: list[dict], checks: dict[tuple[str, str], ImageCheck]) -> list[dict]:
    """One row per QA record and per alignment panel whose image failed its check."""
    rows = []
    for item, qa_id in [(r, r["qa_id"]) for r in records] + [(p, "") for p in align]:
        check = checks[_image_key(item)]
        if check.reason:
            rows.append(_skip_row(item, qa_id, check.reason, check.detail))
    return rows


def _all_skipped_message(train: list[dict], checks: dict[tuple[str, str], ImageCheck]) -> str:
    failed = [checks[_image_key(r)] for r in train]
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(Counter(c.reason for c in failed).items()))
    return (
        f"every one of the {len(train)} training QA records was skipped ({reasons}; e.g. {failed[0].detail}): nothing to train on; "
        "re-run the figures stage (dvc repro figures) to re-render the panel images, or lower dataset.min_image_px"
    )


# ---- writing ---------------------------------------------------------------------------------
def _write_bytes_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def _write_table_if_changed(table: pa.Table, path: Path, schema: pa.Schema) -> bool:
    """Write unless the file already holds this very table (its bytes then stay as they are)."""
    if path.is_file():
        try:
            if read_table(path, schema).equals(table):
                return False
        except (OSError, pa.ArrowException, SchemaMismatch):
            pass  # unreadable or of an older schema: rewritten
    write_table(table, path, schema)
    return True


def store_images(images: dict[str, Path], out: Path) -> tuple[int, int]:
    """Each image once as ``out/<sha>.png``: a hard link to the checked file, else a copy; files no conversation
    uses any more are removed (inputs never are). Returns (stored now, pruned)."""
    out.mkdir(parents=True, exist_ok=True)
    stored = 0
    for sha, source in sorted(images.items()):
        dest = out / f"{sha}.png"
        if dest.is_file() and (os.path.samefile(source, dest) or sha256_file(dest) == sha):
            continue
        _link_or_copy(source, dest, sha)
        stored += 1
    keep = {f"{sha}.png" for sha in images}
    stale = [p for p in out.iterdir() if p.name not in keep and p.is_file()]
    for path in stale:
        path.unlink()
    return stored, len(stale)


def _link_or_copy(source: Path, dest: Path, sha: str) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # same file system: no bytes copied, and the figures stage's file stays as it is
        os.replace(tmp, dest)
        return
    except OSError:
        tmp.unlink(missing_ok=True)
    data = source.read_bytes()
    if sha256_bytes(data) != sha:
        raise DatasetError(f"{source} changed while the dataset was written: re-run the stage")
    atomic_write_bytes(dest, data)


def write_shards(split: str, rows: list[dict] | None, shard_rows: int, out: Path) -> tuple[dict[str, str], int]:
    """``<split>-00000.parquet`` ... (an empty split: one empty shard; ``rows=None``: none); stale shards removed.
    Returns ({file name: sha256}, files written)."""
    chunks = [] if rows is None else [rows[i : i + shard_rows] for i in range(0, len(rows), shard_rows)] or [[]]
    shards, written = {}, 0
    for n, chunk in enumerate(chunks):
        path = out / f"{split}-{n:05d}.parquet"
        written += _write_table_if_changed(table_from_rows(chunk, CONVERSATIONS_SCHEMA, path.name), path, CONVERSATIONS_SCHEMA)
        shards[path.name] = sha256_file(path)
    for path in out.glob(f"{split}-*.parquet"):
        if path.name not in shards:
            path.unlink()
    return shards, written


def write_llava_json(split: str, rows: list[dict] | None, out: Path) -> int:
    path = out / "llava" / f"{split}.json"
    if rows is None:
        path.unlink(missing_ok=True)
        return 0
    return int(_write_bytes_if_changed(path, _json_bytes(llava_records(rows), sort_keys=False)))  # LLaVA's key order


def _json_bytes(obj: object, sort_keys: bool = True) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=sort_keys) + "\n").encode("utf-8")


# ---- the stage -------------------------------------------------------------------------------
@dataclass
class DatasetReport:
    # the dataset (saved as report.json: the same after a re-run with nothing new)
    splits: dict  # train | eval | align -> conversations, turns, images, papers, inputs
    skipped: dict  # qa_records, align_panels, images, by_reason
    leakage: dict
    generators: list
    image_tags_defused: int
    warnings: list
    shards: dict  # file name -> sha256 of its bytes
    fingerprint: str  # sha256 over the shards
    params: dict
    # this run only (logged and shown in the Prefect UI, not saved with the data)
    files_written: int = 0
    images_stored: int = 0
    images_pruned: int = 0
    elapsed_s: float = 0.0
    out_dir: str = ""

    RUN_FIELDS = ("files_written", "images_stored", "images_pruned", "elapsed_s", "out_dir")

    def dataset(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUN_FIELDS}

    def summary(self) -> str:
        parts = [
            f"{s} {c['conversations']} conversations ({c['turns']} turns, {c['images']} images, {c['papers']} papers)"
            for s, c in self.splits.items()
        ]
        skip = self.skipped
        skipped = f"{skip['qa_records']} QA records and {skip['align_panels']} panels skipped {skip['by_reason'] or ''}".rstrip()
        return (
            f"dataset: {'; '.join(parts)}; {skipped}; fingerprint {self.fingerprint[:12]}; this run: {self.files_written} files written, "
            f"{self.images_stored} images stored, {self.images_pruned} pruned -> {self.out_dir}"
        )


def split_counts(rows: list[dict], inputs: int) -> dict:
    return {
        "conversations": len(rows),
        "turns": sum(len(r["turns"]) for r in rows),
        "images": len({r["image_sha"] for r in rows}),
        "papers": len({r["paper_sha"] for r in rows}),
        "inputs": inputs,  # QA records (train, eval) or candidate SEM panels (align)
    }


def dataset_warnings(plan: DatasetPlan) -> list[str]:
    out = []
    if not plan.conversations["eval"]:
        out.append("the eval split is empty: no paper is held out (add papers or raise qa.eval_fraction); nothing to evaluate on")
    if "align" in plan.conversations and not plan.conversations["align"]:
        out.append("the alignment set is empty: no SEM panel of a train paper has a usable image and caption")
    if plan.skipped:
        out.append(f"{len(plan.skipped)} QA records or panels skipped: see skipped.parquet")
    if plan.image_tags_defused:
        out.append(f"{plan.image_tags_defused} questions, answers or captions spelled {IMAGE_TAG}: written as 'image'")
    return out


def build_dataset(params: DatasetParams, layout: DataLayout) -> DatasetReport:
    """The whole stage: plan (reads and checks, raises before writing), then write what changed.

    Raises:
        MissingInputError: the qa or figures tables are missing.
        EmptyDatasetError: no QA records, or every training record was skipped.
        LeakageError: a paper or an image in train (or align) and in eval.
    """
    started = time.monotonic()
    plan = plan_dataset(params, layout)
    out = layout.dataset
    stored, pruned = store_images(plan.images, out / "images")
    shards, written = {}, 0
    for split in SPLITS:
        rows = plan.conversations.get(split)
        split_shards, n = write_shards(split, rows, params.shard_rows, out)
        shards |= split_shards
        written += n + write_llava_json(split, rows, out)
    skipped = table_from_rows(plan.skipped, DATASET_SKIPPED_SCHEMA, "skipped.parquet")
    written += _write_table_if_changed(skipped, out / "skipped.parquet", DATASET_SKIPPED_SCHEMA)
    report = DatasetReport(
        splits={s: split_counts(rows, plan.inputs[s]) for s, rows in plan.conversations.items()},
        skipped={
            "qa_records": sum(bool(r["qa_id"]) for r in plan.skipped),
            "align_panels": sum(not r["qa_id"] for r in plan.skipped),
            "images": len({r["image_path"] for r in plan.skipped}),
            "by_reason": dict(sorted(Counter(r["reason"] for r in plan.skipped).items())),
        },
        leakage=plan.leakage,
        generators=plan.generators,
        image_tags_defused=plan.image_tags_defused,
        warnings=dataset_warnings(plan),
        shards=dict(sorted(shards.items())),
        fingerprint=sha256_json(sorted(shards.items())),
        params=params.model_dump(),
        images_stored=stored,
        images_pruned=pruned,
        out_dir=str(out),
    )
    written += _write_bytes_if_changed(out / "report.json", _json_bytes(report.dataset()))
    report.files_written, report.elapsed_s = written + stored, round(time.monotonic() - started, 2)
    for warning in report.warnings:
        log.warning("dataset: %s", warning)
    return report

