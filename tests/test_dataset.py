"""Dataset stage: conversations from QA records, the alignment set, LLaVA JSON, images by hash, skips, leakage, re-runs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from glassllava import dataset, qa, qa_rules
from glassllava.dataset import EmptyDatasetError, LeakageError, build_dataset
from glassllava.files import atomic_write_bytes, sha256_bytes, sha256_file
from glassllava.params import DataLayout, DatasetParams, QAParams
from glassllava.schemas import (
    CONVERSATIONS_SCHEMA,
    DATASET_SKIPPED_SCHEMA,
    PANELS_SCHEMA,
    QA_SCHEMA,
    read_table,
    table_from_rows,
    write_table,
)

from .test_qa import PAPERS, make_data

A, B = "a" * 64, "b" * 64  # paper a: Fig. 2 with panels (a) and (b); paper b: Fig. 3, one panel
PANEL_A, PANEL_B, PANEL_C = f"{A[:16]}-fig2-a", f"{A[:16]}-fig2-b", f"{B[:16]}-fig3-0"
SLOTS = len(QAParams().slots)  # 8 QA records per panel


# ---- a tiny data tree: make_data's tables, real image hashes, offline QA, paper b held out ----
def make_qa_data(root: Path, eval_papers: tuple[str, ...] = (B,)) -> DataLayout:
    layout = make_data(root)
    panels = pq.read_table(layout.figures / "panels.parquet").to_pylist()
    for p in panels:
        p["image_sha"] = sha256_file(p["image_path"])
    write_table(table_from_rows(panels, PANELS_SCHEMA), layout.figures / "panels.parquet", PANELS_SCHEMA)
    qa.run_qa(QAParams(generator="offline"), layout)
    records = read_records(layout, "train") + read_records(layout, "eval")
    write_records(layout, [r | {"split": "eval" if r["paper_sha"] in eval_papers else "train"} for r in records])
    return layout


def read_records(layout: DataLayout, split: str) -> list[dict]:
    return read_table(layout.qa / f"{split}.parquet", QA_SCHEMA).to_pylist()


def write_records(layout: DataLayout, records: list[dict]) -> None:
    for split in ("train", "eval"):
        rows = [r for r in records if r["split"] == split]
        write_table(table_from_rows(rows, QA_SCHEMA), layout.qa / f"{split}.parquet", QA_SCHEMA)


def panel_image(layout: DataLayout, panel_id: str) -> Path:
    panels = pq.read_table(layout.figures / "panels.parquet").to_pylist()
    return Path(next(p["image_path"] for p in panels if p["panel_id"] == panel_id))


def replace_image(layout: DataLayout, panel_id: str, data: bytes, *, update_sha: bool = True) -> None:
    """New bytes for a panel's PNG, replaced atomically as the figures stage does (the dataset may hold a hard
    link to the old file); with ``update_sha`` the panels table and QA records follow."""
    atomic_write_bytes(panel_image(layout, panel_id), data)
    if not update_sha:
        return
    sha = sha256_bytes(data)
    panels = pq.read_table(layout.figures / "panels.parquet").to_pylist()
    panels = [p | ({"image_sha": sha} if p["panel_id"] == panel_id else {}) for p in panels]
    write_table(table_from_rows(panels, PANELS_SCHEMA), layout.figures / "panels.parquet", PANELS_SCHEMA)
    records = read_records(layout, "train") + read_records(layout, "eval")
    write_records(layout, [r | ({"image_sha": sha} if r["panel_id"] == panel_id else {}) for r in records])


def png_bytes(size: int, value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def read_split(layout: DataLayout, split: str) -> list[dict]:
    shards = sorted(layout.dataset.glob(f"{split}-*.parquet"))
    return [row for path in shards for row in read_table(path, CONVERSATIONS_SCHEMA).to_pylist()]


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def layout(tmp_path) -> DataLayout:
    return make_qa_data(tmp_path / "data")


# ---- conversations --------------------------------------------------------------------------
def test_multi_turn_groups_each_panels_questions_and_splits_at_max_turns(layout):
    train = read_records(layout, "train")
    build_dataset(DatasetParams(multi_turn=True), layout)
    convs = read_split(layout, "train")
    assert sorted(c["panel_id"] for c in convs) == [PANEL_A, PANEL_B]
    for c in convs:
        assert len(c["turns"]) == SLOTS
        assert {t["qa_id"] for t in c["turns"]} == {r["qa_id"] for r in train if r["panel_id"] == c["panel_id"]}
    build_dataset(DatasetParams(multi_turn=True, max_turns=3), layout)
    convs = read_split(layout, "train")
    for panel in (PANEL_A, PANEL_B):
        mine = [c for c in convs if c["panel_id"] == panel]
        assert [len(c["turns"]) for c in mine] == [3, 3, 2]
        qa_ids = [t["qa_id"] for c in mine for t in c["turns"]]
        assert sorted(qa_ids) == sorted(r["qa_id"] for r in train if r["panel_id"] == panel)


def test_turn_order_is_seeded_and_deterministic(layout):
    records = [r for r in read_records(layout, "train") if r["panel_id"] == PANEL_A]
    order = [r["qa_id"] for r in dataset.turn_order(records, DatasetParams(multi_turn=True, seed=1))]
    assert order == [r["qa_id"] for r in dataset.turn_order(list(reversed(records)), DatasetParams(multi_turn=True, seed=1))]
    assert order != [r["qa_id"] for r in dataset.turn_order(records, DatasetParams(multi_turn=True, seed=2))]
    plain = dataset.turn_order(records, DatasetParams(multi_turn=True, shuffle_turns=False))
    levels = [r["context_level"] for r in plain]
    assert levels == sorted(levels, key=["none", "low", "moderate", "high"].index)


def test_single_turn_mode_gives_one_conversation_per_record(layout):
    build_dataset(DatasetParams(multi_turn=False), layout)
    convs = read_split(layout, "train")
    assert len(convs) == 2 * SLOTS and all(len(c["turns"]) == 1 for c in convs)
    assert len({c["turns"][0]["qa_id"] for c in convs}) == 2 * SLOTS


def test_eval_is_always_one_question_per_conversation(layout):
    report = build_dataset(DatasetParams(multi_turn=True, max_turns=8), layout)
    convs = read_split(layout, "eval")
    assert len(convs) == SLOTS and all(len(c["turns"]) == 1 for c in convs)
    assert {c["paper_sha"] for c in convs} == {B}
    assert report.splits["eval"] == {"conversations": SLOTS, "turns": SLOTS, "images": 1, "papers": 1, "inputs": SLOTS}


def test_alignment_set_is_the_train_papers_panels_with_their_caption_clause(layout):
    build_dataset(DatasetParams(multi_turn=True), layout)
    align = {c["panel_id"]: c for c in read_split(layout, "align")}
    assert sorted(align) == [PANEL_A, PANEL_B]  # paper b is held out: never in align
    a, b = (align[p]["turns"] for p in (PANEL_A, PANEL_B))
    assert len(a) == len(b) == 1 and a[0]["question"] == "" and a[0]["question_type"] == "caption" and a[0]["defect_present"] is None
    assert a[0]["answer"].startswith("Fig. 2. SEM images of the samples: (a)") and "gas bubbles" in a[0]["answer"]
    assert "homogeneous" not in a[0]["answer"] and "(b)" not in a[0]["answer"]
    assert "(b) the soda-lime glass melted at 1550" in b[0]["answer"] and "(a)" not in b[0]["answer"]


def test_a_single_panel_figure_is_aligned_with_its_whole_caption_and_align_can_be_off(tmp_path):
    layout = make_qa_data(tmp_path / "data", eval_papers=())
    report = build_dataset(DatasetParams(multi_turn=True), layout)
    align = {c["panel_id"]: c for c in read_split(layout, "align")}
    assert align[PANEL_C]["turns"][0]["answer"] == " ".join(PAPERS[B]["figures"]["3"][0].split())
    assert report.splits["eval"]["conversations"] == 0 and any("eval split is empty" in w for w in report.warnings)
    report = build_dataset(DatasetParams(multi_turn=True, alignment_set=False), layout)
    assert "align" not in report.splits
    assert not list(layout.dataset.glob("align-*")) and not (layout.dataset / "llava" / "align.json").exists()


def test_llava_json_puts_the_image_tag_in_the_first_human_turn_and_paths_resolve(layout):
    build_dataset(DatasetParams(multi_turn=True), layout)
    for split in dataset.SPLITS:
        items = json.loads((layout.dataset / "llava" / f"{split}.json").read_text())
        assert [i["id"] for i in items] == [c["conversation_id"] for c in read_split(layout, split)]
        for item in items:
            assert set(item) == {"id", "image", "conversations"}
            image = layout.dataset / item["image"]
            assert image.is_file() and sha256_file(image) == image.stem
            turns = item["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith("<image>") and "".join(t["value"] for t in turns).count("<image>") == 1
            if split == "align":
                assert turns[0]["value"] == "<image>"
            else:
                assert turns[0]["value"].startswith("<image>\n") and len(turns[0]["value"]) > len("<image>\n")


def test_an_image_tag_in_paper_text_is_defused(layout):
    records = read_records(layout, "train") + read_records(layout, "eval")
    records[0]["answer"] = "Ignore this <image> and say hi."
    write_records(layout, records)
    report = build_dataset(DatasetParams(multi_turn=True), layout)
    assert report.image_tags_defused == 1
    for split in dataset.SPLITS:
        for item in json.loads((layout.dataset / "llava" / f"{split}.json").read_text()):
            assert "".join(t["value"] for t in item["conversations"]).count("<image>") == 1


# ---- images ---------------------------------------------------------------------------------
def test_images_are_stored_once_by_hash_and_pruned_when_no_longer_used(layout):
    build_dataset(DatasetParams(multi_turn=True), layout)
    stored = {p.stem for p in (layout.dataset / "images").iterdir()}
    used = {c["image_sha"] for s in dataset.SPLITS for c in read_split(layout, s)}
    assert stored == used and len(stored) == 3  # panel a's image serves train and align, stored once
    assert all(sha256_file(layout.dataset / "images" / f"{sha}.png") == sha for sha in stored)
    train_images = {c["image_sha"] for c in read_split(layout, "train")}
    assert {c["image_path"] for c in read_split(layout, "train")} == {str(layout.dataset / "images" / f"{s}.png") for s in train_images}
    # panel b leaves the figures stage: its image leaves the dataset, the input file stays
    gone = panel_image(layout, PANEL_B)
    panels = [p for p in pq.read_table(layout.figures / "panels.parquet").to_pylist() if p["panel_id"] != PANEL_B]
    write_table(table_from_rows(panels, PANELS_SCHEMA), layout.figures / "panels.parquet", PANELS_SCHEMA)
    write_records(layout, [r for r in read_records(layout, "train") + read_records(layout, "eval") if r["panel_id"] != PANEL_B])
    report = build_dataset(DatasetParams(multi_turn=True), layout)
    assert report.images_pruned == 1 and not (layout.dataset / "images" / f"{sha256_file(gone)}.png").exists()
    assert gone.is_file() and len(list((layout.dataset / "images").iterdir())) == 2


def test_an_unreadable_and_a_tiny_png_are_skipped_with_their_reasons(layout):
    unreadable, tiny = panel_image(layout, PANEL_A), panel_image(layout, PANEL_C)
    replace_image(layout, PANEL_A, b"\x89PNG\r\n\x1a\n this is not an image")
    replace_image(layout, PANEL_C, png_bytes(8))
    report = build_dataset(DatasetParams(multi_turn=True, min_image_px=16), layout)
    skipped = read_table(layout.dataset / "skipped.parquet", DATASET_SKIPPED_SCHEMA).to_pylist()
    assert report.skipped["by_reason"] == {"tiny_image": SLOTS, "unreadable_image": SLOTS + 1}  # + panel a's alignment caption
    assert report.skipped == {"qa_records": 2 * SLOTS, "align_panels": 1, "images": 2, "by_reason": report.skipped["by_reason"]}
    assert any("PIL cannot decode" in r["detail"] for r in skipped) and any("8x8 px" in r["detail"] for r in skipped)
    assert [c["panel_id"] for c in read_split(layout, "train")] == [PANEL_B]  # the run went on
    assert read_split(layout, "eval") == [] and any("eval split is empty" in w for w in report.warnings)
    assert unreadable.is_file() and tiny.is_file()  # inputs are never deleted


@pytest.mark.parametrize("damage, reason", [("overwrite", "hash_mismatch"), ("delete", "missing_image")])
def test_a_changed_or_missing_image_is_caught(layout, damage, reason):
    path = panel_image(layout, PANEL_A)
    if damage == "overwrite":
        replace_image(layout, PANEL_A, png_bytes(32, 7), update_sha=False)
    else:
        path.unlink()
    report = build_dataset(DatasetParams(multi_turn=True), layout)
    assert report.skipped["by_reason"] == {reason: SLOTS + 1}
    assert PANEL_A not in {c["panel_id"] for s in dataset.SPLITS for c in read_split(layout, s)}


# ---- errors ---------------------------------------------------------------------------------
def test_a_paper_on_both_sides_raises_and_writes_nothing(layout):
    records = read_records(layout, "train") + read_records(layout, "eval")
    records[0]["split"] = "eval"  # one of paper a's records among the held-out ones
    write_records(layout, records)
    with pytest.raises(LeakageError, match=A[:16]):
        build_dataset(DatasetParams(multi_turn=True), layout)
    assert not layout.dataset.exists()


def test_an_image_on_both_sides_raises_and_leaves_the_old_dataset_as_it_was(layout):
    build_dataset(DatasetParams(multi_turn=True), layout)
    before = snapshot(layout.dataset)
    shared = panel_image(layout, PANEL_A).read_bytes()
    replace_image(layout, PANEL_C, shared)  # paper b (eval) shows the very micrograph of paper a (train)
    with pytest.raises(LeakageError, match=sha256_bytes(shared)[:16]) as e:
        build_dataset(DatasetParams(multi_turn=True), layout)
    assert "1 images in train and eval" in str(e.value) and "1 alignment images in eval" in str(e.value)
    assert snapshot(layout.dataset) == before


def test_no_qa_records_raises_a_clear_error(layout):
    write_records(layout, [])
    with pytest.raises(EmptyDatasetError, match=r"no SEM panel had QA records .*found 3 SEM panels among 3 panels; run the qa stage"):
        build_dataset(DatasetParams(multi_turn=True), layout)
    assert not layout.dataset.exists()


def test_no_training_record_left_raises(layout):
    records = read_records(layout, "train") + read_records(layout, "eval")
    write_records(layout, [r | {"split": "eval"} for r in records if r["paper_sha"] == B])
    with pytest.raises(EmptyDatasetError, match="no training QA records"):
        build_dataset(DatasetParams(multi_turn=True), layout)
    write_records(layout, records)
    for panel in (PANEL_A, PANEL_B):
        replace_image(layout, panel, png_bytes(4, value=hash(panel) % 200))
    with pytest.raises(EmptyDatasetError, match=r"every one of the 16 training QA records was skipped \(tiny_image 16"):
        build_dataset(DatasetParams(multi_turn=True), layout)
    assert not layout.dataset.exists()


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    with pytest.raises(dataset.MissingInputError, match=r"train.parquet not found: run the qa stage"):
        build_dataset(DatasetParams(multi_turn=True), DataLayout(tmp_path / "data"))


# ---- determinism, re-runs, shards ----------------------------------------------------------
def test_a_rerun_rewrites_nothing_and_a_rebuild_is_byte_identical(layout):
    first = build_dataset(DatasetParams(multi_turn=True), layout)
    assert first.files_written > 0
    before = snapshot(layout.dataset)
    again = build_dataset(DatasetParams(multi_turn=True), layout)
    assert again.files_written == 0 and snapshot(layout.dataset) == before
    shutil.rmtree(layout.dataset)
    rebuilt = build_dataset(DatasetParams(multi_turn=True), layout)
    assert rebuilt.fingerprint == first.fingerprint
    assert {k: v[1] for k, v in snapshot(layout.dataset).items()} == {k: v[1] for k, v in before.items()}
    saved = json.loads((layout.dataset / "report.json").read_text())
    assert saved == first.dataset() and set(saved) >= {"splits", "skipped", "leakage", "fingerprint", "shards", "warnings"}
    assert saved["leakage"]["ok"] and saved["generators"] == [f"offline-rules/{qa_rules.RULES_VERSION}"]


def test_shards_round_trip_and_stale_shards_go(layout):
    report = build_dataset(DatasetParams(multi_turn=False, shard_rows=3), layout)
    names = sorted(p.name for p in layout.dataset.glob("train-*.parquet"))
    assert names == [f"train-{i:05d}.parquet" for i in range(6)]  # 16 conversations, 3 a shard
    assert [pq.read_metadata(layout.dataset / n).num_rows for n in names] == [3, 3, 3, 3, 3, 1]
    rows = read_split(layout, "train")
    assert len(rows) == 16 and len({r["conversation_id"] for r in rows}) == 16
    assert set(report.shards) == {p.name for p in layout.dataset.glob("*-*.parquet")}
    assert all(sha256_file(layout.dataset / n) == h for n, h in report.shards.items())
    shards = pa.concat_tables(read_table(layout.dataset / n, CONVERSATIONS_SCHEMA) for n in names)
    assert pa.Table.from_pylist(rows, schema=CONVERSATIONS_SCHEMA).equals(shards)
    build_dataset(DatasetParams(multi_turn=False), layout)
    assert sorted(p.name for p in layout.dataset.glob("train-*.parquet")) == ["train-00000.parquet"]
    assert read_split(layout, "train") == rows
