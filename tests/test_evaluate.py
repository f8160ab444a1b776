"""Stage evaluate, the answer side: the evaluation set, and every row answering it (cached per row)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glassllava import evaluate as ev
from glassllava.learn_bench import build_bench_data
from glassllava.model import build_model, save_model
from glassllava.params import EvaluateParams, ModelParams
from glassllava.scoring import defect_claim

PARAMS = EvaluateParams(max_new_tokens=6, batch_size=8)


def _tiny_model(out: Path, scale: float) -> Path:
    built = build_model(ModelParams(preset="tiny"), seed=0)
    with torch.no_grad():  # a random tiny model only repeats one token unless its matrices are scaled up
        for name, p in built.model.named_parameters():
            if "vision_tower" not in name and p.dim() > 1:
                p.mul_(scale)
    return save_model(built, out, generation={"max_new_tokens": 6})


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    layout = build_bench_data(tmp_path_factory.mktemp("evaluate") / "work", papers=4, seed=3, eval_fraction=0.5)
    _tiny_model(layout.model, 6.0)
    return layout


@pytest.fixture(scope="module")
def questions(layout):
    return ev.eval_questions(layout, max_questions=10)


def test_the_evaluation_set_is_the_held_out_questions_with_their_gold_labels(layout, questions):
    import pyarrow.parquet as pq

    train_papers = {r["paper_sha"] for r in pq.read_table(layout.qa / "train.parquet").to_pylist()}
    assert questions and not {q["paper_sha"] for q in questions} & train_papers
    records = {r["qa_id"]: r for r in pq.read_table(layout.qa / "eval.parquet").to_pylist()}
    for q in questions:
        rec = records[q["qa_id"]]
        assert q["reference"] == rec["answer"] and q["features"] == list(rec["features"]) and q["defect_present"] == rec["defect_present"]
        assert Path(q["image_path"]).exists()
    changed = [dict(q) for q in questions]
    changed[0]["reference"] += " More."
    assert ev.eval_set_sha(changed) != ev.eval_set_sha(questions) == ev.eval_set_sha([dict(q) for q in questions])


def test_the_majority_row_says_the_train_majority_in_each_questions_polarity(layout, questions):
    label = ev.majority_label(layout)
    row = ev.answer_majority(layout, questions)
    for q, a in zip(questions, row.answers):
        if q["question_type"] == "defect_detection":
            assert defect_claim(a["answer"], q["question"]) is label, (q["question"], a["answer"])
        else:
            assert a["answer"] == ev.NOT_ASKED
    assert defect_claim(ev.majority_answer("Is this glass free of defects?", True), "Is this glass free of defects?") is True
    assert defect_claim(ev.majority_answer("Are there any defects?", False), "Are there any defects?") is False


def test_trained_and_blind_rows_are_cached_and_follow_the_weights(layout, questions, tmp_path):
    sha = ev.eval_set_sha(questions)
    first = {r.row: r for r in ev.answer_trained(layout, questions, PARAMS, ["model", "blind"], sha)}
    assert not first["model"].from_cache and len(first["model"].answers) == len(questions)
    assert all(a["row"] == "model" and a["qa_id"] == q["qa_id"] for a, q in zip(first["model"].answers, questions))
    again = {r.row: r for r in ev.answer_trained(layout, questions, PARAMS, ["model", "blind"], sha)}
    assert again["model"].from_cache and again["blind"].from_cache
    assert [a["answer"] for a in again["model"].answers] == [a["answer"] for a in first["model"].answers]
    _tiny_model(layout.model, 7.0)  # new weights: new answers, and the old answers' cache goes
    third = {r.row: r for r in ev.answer_trained(layout, questions, PARAMS, ["model"], sha)}
    assert not third["model"].from_cache
    assert len(list((layout.root / "evaluate" / "answers").glob("model.*.parquet"))) == 1


def test_the_base_row_is_the_preset_before_training(layout, questions):
    sha = ev.eval_set_sha(questions)
    base = ev.answer_base(layout, questions, PARAMS, ModelParams(preset="tiny"), sha)
    assert not base.from_cache and len(base.answers) == len(questions)
    assert ev.answer_base(layout, questions, PARAMS, ModelParams(preset="tiny"), sha).from_cache


def test_no_evaluation_set_is_a_clear_error(tmp_path):
    from glassllava.params import DataLayout

    with pytest.raises(ev.EvaluateInputError, match="run the qa and dataset stages first"):
        ev.eval_questions(DataLayout(tmp_path / "data"))


def test_the_stage_offline_writes_metrics_plots_report_and_logs_to_the_models_run(layout, tmp_path, monkeypatch):
    import json

    import mlflow
    import pyarrow.parquet as pq

    from glassllava.params import Params

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:  # the training run the model came from
        pass
    layout.train.mkdir(parents=True, exist_ok=True)
    (layout.train / "report.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id}))
    params = Params(model=ModelParams(preset="tiny"), evaluate=EvaluateParams(max_new_tokens=6, batch_size=8, bootstrap=200, max_questions=10))
    report = ev.run_evaluate(params, layout)
    assert report.judge == "offline" and report.rows == ["model", "blind", "base", "majority"]
    head = json.loads(report.metrics_json.read_text())
    assert 0.0 <= head["defect_accuracy"] <= 1.0 and head["defect_accuracy_is_proxy"] == 1 and head["eval_questions"] == 10
    assert "context_level,metric" in report.levels_csv.read_text().splitlines()[0].replace("row,", "")
    assert "offline proxy" in report.report_html.read_text().lower()
    judged = pq.read_table(layout.root / "evaluate" / "judgments.parquet").to_pylist()
    majority = [j for j in judged if j["row"] == "majority"]
    assert majority and {j["qa_id"] for j in majority} <= {q["qa_id"] for q in ev.eval_questions(layout, 10) if q["question_type"] == "defect_detection"}
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.data.metrics["eval.defect_accuracy"] == head["defect_accuracy"] and logged.data.tags["eval_judge"] == "offline"
    again = ev.run_evaluate(params, layout)  # nothing new: every row from its cache
    assert set(again.rows_from_cache) >= {"model", "blind", "base"} and json.loads(again.metrics_json.read_text()) == head


def test_the_vision_row_shows_each_panel_to_an_openai_compatible_model_and_caches_it(layout, questions, monkeypatch):
    from glassllava.params import JudgeLLMParams
    from .fake_openai import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-vision-0000")
    with FakeOpenAI() as server:
        server.model = lambda body: "Yes. The glass shows gas bubbles and a crack."
        params = EvaluateParams(judge="llm", vision_model="fake-vision", llm=JudgeLLMParams(base_url=server.base_url, concurrency=2, backoff_s=0.0))
        sha = ev.eval_set_sha(questions)
        row = ev.answer_vision(layout, questions, params, sha)
        assert row.row == "vision:fake-vision" and [a["answer"] for a in row.answers] == ["Yes. The glass shows gas bubbles and a crack."] * len(questions)
        sent = server.chat_requests()
        assert len(sent) == len(questions)
        content = sent[0]["body"]["messages"][1]["content"]
        assert content[1]["image_url"]["url"].startswith("data:image/png;base64,") and sent[0]["body"]["model"] == "fake-vision"
        again = ev.answer_vision(layout, questions, params, sha)  # the client's cache: no request
        assert again.from_cache and len(server.chat_requests()) == len(questions)
    cache = layout.root / "evaluate" / "cache"
    assert not any("sk-test-vision-0000" in p.read_text(errors="ignore") for p in cache.rglob("*") if p.is_file())


def test_the_stage_with_an_llm_judge_and_a_vision_row_then_a_rerun_makes_no_request(layout, tmp_path, monkeypatch):
    import json

    from glassllava.params import JudgeLLMParams, Params

    from .fake_openai import FakeOpenAI
    from .test_judge import FakeJudge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge-1111")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with FakeOpenAI() as server:
        judge_model = FakeJudge()
        server.model = lambda body: judge_model(body) if "judge_data" in json.dumps(body) else "No. The glass is free of defects."
        llm = JudgeLLMParams(base_url=server.base_url, model="fake-judge", concurrency=2, backoff_s=0.0)
        params = Params(model=ModelParams(preset="tiny"), evaluate=EvaluateParams(
            judge="llm", llm=llm, vision_model="fake-vision", rows=["model", "majority", "vision"], max_new_tokens=6, batch_size=8,
            bootstrap=200, max_questions=8, variance_subset=3, variance_repeats=2))
        report = ev.run_evaluate(params, layout, out_dir=tmp_path / "reports")
        assert report.judge == "llm" and report.rows == ["model", "majority", "vision:fake-vision"]
        head = json.loads(report.metrics_json.read_text())
        assert "quality" in head and head["defect_accuracy_is_proxy"] == 0
        assert "vision:fake-vision.proxy_defect.accuracy" in head
        state = json.loads((layout.root / "evaluate" / "report.json").read_text())
        assert state["variance"] is not None and state["account"]["requests"] > 0
        sent = len(server.chat_requests())
        again = ev.run_evaluate(params, layout, out_dir=tmp_path / "reports")
        assert len(server.chat_requests()) == sent and again.judge_account["requests"] == 0  # everything from the caches
    html = report.report_html.read_text()
    assert "fake-judge" in html
    assert not any("sk-test-judge-1111" in p.read_text(errors="ignore") for p in (layout.root / "evaluate").rglob("*") if p.is_file() and p.suffix in (".json", ".parquet"))
