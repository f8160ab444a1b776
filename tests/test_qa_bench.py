"""End to end on a small generated corpus: ingest -> figures -> qa, scored against the corpus truth."""

from __future__ import annotations

import pytest

from glassllava.figures import run_figures
from glassllava.ingest import run_ingest
from glassllava.params import CorpusParams, DataLayout, FiguresParams, IngestParams, QAParams
from glassllava.qa_bench import TRUTH_FEATURES, run_qa_benchmark, truth_panels
from glassllava.qa_rules import FEATURES
from glassllava.synth import generate_corpus
from glassllava.synth.micrographs import PHENOMENA


@pytest.fixture(scope="module")
def pipeline_data(tmp_path_factory):
    layout = DataLayout(tmp_path_factory.mktemp("qa-bench") / "data")
    generate_corpus(layout.corpus, papers=3, seed=11)
    run_ingest(CorpusParams(sources=["generated"], inbox=str(layout.root / "inbox")), IngestParams(), layout)
    run_figures(FiguresParams(dpi=72), layout)
    return layout


def test_truth_vocabulary_maps_every_phenomenon_into_the_qa_vocabulary():
    assert set(TRUTH_FEATURES) == set(PHENOMENA)
    assert set(TRUTH_FEATURES.values()) <= set(FEATURES)


def test_offline_qa_agrees_with_the_corpus_truth_and_reruns_for_free(pipeline_data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    manifest = pipeline_data.corpus / "manifest.json"
    result = run_qa_benchmark(pipeline_data.root, manifest, QAParams())
    assert result["generator"].startswith("offline-rules/")
    assert result["records_per_sem_panel"] == len(QAParams().slots)
    assert result["record_valid_rate"] == 1.0
    assert result["records_matched_to_truth"] > 0
    assert result["defect_agreement"] >= 0.95
    assert result["feature_f1_mean"] >= 0.9
    assert result["requests"] == 0 and result["rerun_requests"] == 0
    assert result["rerun_panels_from_cache"] == result["panels"]
    assert result["truth_sem_panels_with_records"] <= result["truth_sem_panels"] == len(truth_panels(manifest))
    assert not (pipeline_data.root / "qa").exists()  # the benchmark works in a scratch folder


def test_figures_prunes_what_an_older_extractor_run_left(pipeline_data):
    """Runs last in this module: it re-renders the fixture's figures at another resolution."""
    import pyarrow.parquet as pq

    before = set((pipeline_data.figures / "images").glob("*.png"))
    run_figures(FiguresParams(dpi=60), pipeline_data)
    used = {r["image_path"].rsplit("/", 1)[1] for name in ("figures", "panels")
            for r in pq.read_table(pipeline_data.figures / f"{name}.parquet").to_pylist() if r["image_path"]}
    now = {p.name for p in (pipeline_data.figures / "images").glob("*.png")}
    assert now == used and not ({p.name for p in before} & now)
    assert len(list((pipeline_data.figures / "papers").glob("*.json"))) == 3
