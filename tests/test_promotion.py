"""glassllava.promotion: the pure rule, then the registry on a private sqlite store per test (``mlflow_uri`` fixture)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from glassllava import promotion, tracking
from glassllava.params import PromotionParams
from glassllava.promotion import (
    Decision,
    champion_metrics,
    decide,
    decide_against_champion,
    promote,
    promote_if_better,
    record_evaluation,
    rollback,
)

NAME = "glassllava"
SET_A = "a" * 64
SET_B = "b" * 64


def _params(**kw) -> PromotionParams:
    return PromotionParams(**kw)


# --- decide: the pure rule ---------------------------------------------------------------------------------------------


def test_first_run_promotes():
    d = decide({"defect_accuracy": 0.4}, None, _params(), eval_set_sha=SET_A, champion_eval_set_sha=None)
    assert d.promote and not d.needs_champion_reeval and d.code == promotion.FIRST_RUN
    assert "no champion yet" in d.reason and d.candidate_value == 0.4 and d.champion_value is None


def test_loser_tie_and_below_margin_keep_the_champion():
    champ = {"defect_accuracy": 0.70}
    for cand, margin in ((0.60, 0.0), (0.70, 0.0), (0.72, 0.05), (0.75, 0.05)):
        d = decide({"defect_accuracy": cand}, champ, _params(margin=margin), eval_set_sha=SET_A, champion_eval_set_sha=SET_A)
        assert not d.promote and d.code == promotion.BELOW_MARGIN and "champion kept" in d.reason, (cand, margin)
        assert d.candidate_value == cand and d.champion_value == 0.70 and d.margin == margin
    d = decide({"defect_accuracy": 0.76}, champ, _params(margin=0.05), eval_set_sha=SET_A, champion_eval_set_sha=SET_A)
    assert d.promote and d.code == promotion.BEATS_CHAMPION and "+0.06" in d.reason


def test_significance_rule():
    p = _params(require_significant=True)
    champ = {"defect_accuracy": 0.60, "defect_accuracy_lo": 0.50, "defect_accuracy_hi": 0.70}
    overlapping = {"defect_accuracy": 0.75, "defect_accuracy_lo": 0.65, "defect_accuracy_hi": 0.85}
    d = decide(overlapping, champ, p, eval_set_sha=SET_A, champion_eval_set_sha=SET_A)
    assert not d.promote and d.code == promotion.NOT_SIGNIFICANT and d.candidate_lo == 0.65 and d.champion_hi == 0.70
    apart = {"defect_accuracy": 0.85, "defect_accuracy_lo": 0.71, "defect_accuracy_hi": 0.95}
    d = decide(apart, champ, p, eval_set_sha=SET_A, champion_eval_set_sha=SET_A)
    assert d.promote and "significant" in d.reason
    d = decide({"defect_accuracy": 0.85}, champ, p, eval_set_sha=SET_A, champion_eval_set_sha=SET_A)
    assert not d.promote and d.code == promotion.MISSING_INTERVAL and "defect_accuracy_lo" in d.reason
    # without the rule the same overlapping candidate wins
    assert decide(overlapping, champ, _params(), eval_set_sha=SET_A, champion_eval_set_sha=SET_A).promote


def test_changed_evaluation_set_asks_for_reevaluation():
    champ = {"defect_accuracy": 0.1}
    d = decide({"defect_accuracy": 0.9}, champ, _params(), eval_set_sha=SET_B, champion_eval_set_sha=SET_A)
    assert d.needs_champion_reeval and not d.promote and d.code == promotion.NEEDS_REEVAL
    assert SET_A in d.reason and SET_B in d.reason and "re-evaluate" in d.reason
    never = decide({"defect_accuracy": 0.9}, {}, _params(), eval_set_sha=SET_B, champion_eval_set_sha=None)
    assert never.needs_champion_reeval and "no recorded evaluation" in never.reason


def test_missing_or_unusable_metric():
    p = _params(metric="judge_score")
    d = decide({"defect_accuracy": 0.9}, None, p, eval_set_sha=SET_A, champion_eval_set_sha=None)
    assert not d.promote and d.code == promotion.MISSING_METRIC and "'judge_score'" in d.reason and "defect_accuracy" in d.reason
    d = decide({"judge_score": 4.0}, {"defect_accuracy": 0.5}, p, eval_set_sha=SET_A, champion_eval_set_sha=SET_A)
    assert not d.promote and not d.needs_champion_reeval and "champion's evaluation has no number" in d.reason
    for bad in (math.nan, "n/a", None, True):
        assert not decide({"judge_score": bad}, None, p, eval_set_sha=SET_A, champion_eval_set_sha=None).promote


# --- the registry ------------------------------------------------------------------------------------------------------


def _version(tmp_path: Path, n: int) -> int:
    """A real model version: a finished training run plus a folder registered in place (nothing copied)."""
    folder = tmp_path / f"model{n}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "n": n}))
    with tracking.start_run({"train": {"lr": 1e-4, "seed": n}}, {"git_sha": f"sha{n}"}, experiment="glassllava-test") as run:
        pass
    return tracking.register_model(run.run_id, folder, name=NAME, copy_artifacts=False)


def _aliases(client: MlflowClient) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def _head(value: float, **extra) -> dict:
    return {"defect_accuracy": value, "n_questions": 40, **extra}


@pytest.fixture
def client(mlflow_uri) -> MlflowClient:
    return MlflowClient(mlflow_uri)


def test_champion_metrics_and_record_evaluation(client, tmp_path):
    assert champion_metrics(client, NAME, "champion") is None  # no registered model
    v1 = _version(tmp_path, 1)
    assert champion_metrics(client, NAME, "champion") is None  # model, no alias
    client.set_registered_model_alias(NAME, "champion", str(v1))
    assert champion_metrics(client, NAME, "champion") == (v1, {}, None)  # never evaluated
    record_evaluation(client, NAME, v1, {**_head(0.5), "defect_accuracy_lo": 0.4, "detail": {"x": 1}}, SET_A, eval_run_id="r1")
    version, headline, sha = champion_metrics(client, NAME, "champion")
    assert (version, sha) == (v1, SET_A) and headline == {"defect_accuracy": 0.5, "n_questions": 40, "defect_accuracy_lo": 0.4}
    tags = client.get_model_version(NAME, str(v1)).tags
    assert tags["eval.defect_accuracy"] == "0.5" and tags["eval_set_sha"] == SET_A and tags["eval_run_id"] == "r1"
    # a re-evaluation replaces the old numbers, stale keys included
    record_evaluation(client, NAME, v1, {"defect_accuracy": 0.55, "bad": math.nan}, SET_B)
    assert champion_metrics(client, NAME, "champion") == (v1, {"defect_accuracy": 0.55, "bad": None}, SET_B)
    assert "eval_run_id" not in client.get_model_version(NAME, str(v1)).tags


def test_first_run_promotes_and_is_recorded(client, tmp_path):
    v1 = _version(tmp_path, 1)
    report = tmp_path / "reports" / "promotion.json"
    rec = promote_if_better(client, NAME, v1, _head(0.5), _params(), eval_set_sha=SET_A, report_path=report)
    assert rec["action"] == "promoted" and rec["promoted"] and rec["changed"]
    assert _aliases(client) == {"candidate": v1, "champion": v1}  # no previous-champion on the first run
    assert champion_metrics(client, NAME, "champion") == (v1, _head(0.5), SET_A)

    saved = json.loads(report.read_text())
    assert saved == json.loads(json.dumps(rec))
    assert saved["schema"] == "glassllava.promotion/1" and saved["registered_model"] == NAME
    assert (saved["candidate_version"], saved["champion_version"], saved["previous_champion_version"]) == (v1, v1, None)
    assert saved["champion_version_before"] is None and "first model promoted" in saved["reason"]
    assert saved["decision"]["promote"] is True and saved["decision"]["code"] == "first_run"
    assert saved["decision"]["eval_set_sha"] == SET_A and saved["decision"]["candidate_headline"] == _head(0.5)
    assert saved["params"] == _params().model_dump() and saved["logged_to_run"] is True
    assert not list(report.parent.glob(".*.tmp"))  # atomic write left no temporary file

    mv = client.get_model_version(NAME, str(v1))
    assert mv.tags["promotion.action"] == "promoted" and mv.tags["promotion.metric"] == "defect_accuracy"
    assert mv.tags["promotion.eval_set_sha"] == SET_A and "promotion.previous_version" not in mv.tags
    run = client.get_run(mv.run_id)
    assert run.data.params["promotion.metric"] == "defect_accuracy" and run.data.params["promotion.margin"] == "0.0"
    assert run.data.metrics["promotion.promoted"] == 1.0 and run.data.metrics["promotion.candidate_value"] == 0.5
    assert "promotion.champion_value" not in run.data.metrics
    assert run.data.tags["promotion.action"] == "promoted" and run.data.tags["promotion.reason"] == rec["reason"]
    art = tmp_path / "dl"
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=promotion.DECISION_ARTIFACT, dst_path=str(art))
    assert json.loads(Path(path).read_text())["action"] == "promoted"


def _with_champion(client, tmp_path, value=0.7, sha=SET_A) -> int:
    v1 = _version(tmp_path, 1)
    promote_if_better(client, NAME, v1, _head(value), _params(), eval_set_sha=sha, report_path=None)
    return v1


def test_loser_is_not_promoted_and_aliases_stay(client, tmp_path):
    v1 = _with_champion(client, tmp_path)
    champion_tags = client.get_model_version(NAME, str(v1)).tags
    v2 = _version(tmp_path, 2)
    report = tmp_path / "promotion.json"
    rec = promote_if_better(client, NAME, v2, _head(0.6), _params(), eval_set_sha=SET_A, report_path=report)
    assert rec["action"] == "kept" and not rec["promoted"] and not rec["changed"]
    assert _aliases(client) == {"candidate": v2, "champion": v1}
    assert client.get_model_version(NAME, str(v1)).tags == champion_tags  # the champion is untouched
    mv2 = client.get_model_version(NAME, str(v2))
    assert mv2.tags["promotion.action"] == "kept" and mv2.tags["promotion.champion_value"] == "0.7"
    assert mv2.tags["eval.defect_accuracy"] == "0.6" and mv2.tags["eval_set_sha"] == SET_A  # still recorded
    assert client.get_run(mv2.run_id).data.metrics["promotion.promoted"] == 0.0
    saved = json.loads(report.read_text())
    assert saved["champion_version"] == v1 and saved["decision"]["code"] == "below_margin" and saved["decision"]["champion_version"] == v1


def test_winner_within_margin_is_not_promoted(client, tmp_path):
    v1 = _with_champion(client, tmp_path)
    v2 = _version(tmp_path, 2)
    rec = promote_if_better(client, NAME, v2, _head(0.72), _params(margin=0.05), eval_set_sha=SET_A, report_path=None)
    assert rec["action"] == "kept" and "margin 0.05" in rec["reason"]
    assert _aliases(client) == {"candidate": v2, "champion": v1}


def test_winner_beyond_margin_moves_champion_and_keeps_previous(client, tmp_path):
    v1 = _with_champion(client, tmp_path)
    v2 = _version(tmp_path, 2)
    rec = promote_if_better(client, NAME, v2, _head(0.8), _params(margin=0.05), eval_set_sha=SET_A, report_path=None)
    assert rec["action"] == "promoted"
    assert (rec["champion_version_before"], rec["champion_version"], rec["previous_champion_version"]) == (v1, v2, v1)
    assert _aliases(client) == {"candidate": v2, "champion": v2, "previous-champion": v1}
    assert client.get_model_version(NAME, str(v2)).tags["promotion.previous_version"] == str(v1)
    assert client.get_model_version(NAME, str(v1)).tags["promotion.replaced_by"] == str(v2)
    assert champion_metrics(client, NAME, "champion") == (v2, _head(0.8), SET_A)


def test_significance_through_the_registry(client, tmp_path):
    p = _params(require_significant=True)
    v1 = _version(tmp_path, 1)
    promote_if_better(client, NAME, v1, _head(0.6, defect_accuracy_lo=0.5, defect_accuracy_hi=0.7), p, eval_set_sha=SET_A, report_path=None)
    v2 = _version(tmp_path, 2)
    overlapping = _head(0.75, defect_accuracy_lo=0.65, defect_accuracy_hi=0.85)
    rec = promote_if_better(client, NAME, v2, overlapping, p, eval_set_sha=SET_A, report_path=None)
    assert rec["action"] == "kept" and rec["decision"]["code"] == "not_significant"
    v3 = _version(tmp_path, 3)
    apart = _head(0.9, defect_accuracy_lo=0.8, defect_accuracy_hi=0.95)
    rec = promote_if_better(client, NAME, v3, apart, p, eval_set_sha=SET_A, report_path=None)
    assert rec["action"] == "promoted" and _aliases(client)["champion"] == v3 and _aliases(client)["previous-champion"] == v1


def test_changed_evaluation_set_reevaluates_the_champion(client, tmp_path):
    v1 = _with_champion(client, tmp_path, value=0.7, sha=SET_A)
    v2 = _version(tmp_path, 2)
    # without a way to re-evaluate: no decision, nothing moves
    rec = promote_if_better(client, NAME, v2, _head(0.8), _params(), eval_set_sha=SET_B, report_path=tmp_path / "p.json")
    assert rec["action"] == "needs_champion_reeval" and rec["decision"]["needs_champion_reeval"] and not rec["changed"]
    assert _aliases(client) == {"candidate": v2, "champion": v1}
    assert json.loads((tmp_path / "p.json").read_text())["action"] == "needs_champion_reeval"

    # with it: the champion is measured on the new set (and happens to do better there than the candidate)
    asked = []

    def reevaluate(mv):
        asked.append(int(mv.version))
        return _head(0.85)

    rec = promote_if_better(client, NAME, v2, _head(0.8), _params(), eval_set_sha=SET_B, report_path=None, reevaluate=reevaluate)
    assert asked == [v1] and rec["action"] == "kept" and rec["decision"]["champion_value"] == 0.85
    assert champion_metrics(client, NAME, "champion") == (v1, _head(0.85), SET_B)
    rec = promote_if_better(client, NAME, v2, _head(0.9), _params(), eval_set_sha=SET_B, report_path=None, reevaluate=reevaluate)
    assert asked == [v1] and rec["action"] == "promoted"  # same set now: no second re-evaluation


def test_missing_metric_promotes_nothing(client, tmp_path):
    v1 = _with_champion(client, tmp_path)
    v2 = _version(tmp_path, 2)
    rec = promote_if_better(client, NAME, v2, {"proxy_overlap": 0.9}, _params(), eval_set_sha=SET_A, report_path=None)
    assert rec["action"] == "kept" and "no number for 'defect_accuracy'" in rec["reason"] and "proxy_overlap" in rec["reason"]
    rec = promote_if_better(client, NAME, v2, {"judge_score": 4.5}, _params(metric="judge_score"), eval_set_sha=SET_A, report_path=None)
    assert rec["action"] == "kept" and "champion's evaluation has no number for 'judge_score'" in rec["reason"]
    assert _aliases(client) == {"candidate": v2, "champion": v1}


def test_promoting_the_champion_again_is_a_noop(client, tmp_path):
    v1 = _with_champion(client, tmp_path)
    v2 = _version(tmp_path, 2)
    first = promote_if_better(client, NAME, v2, _head(0.9), _params(), eval_set_sha=SET_A, report_path=None)
    assert first["action"] == "promoted"
    again = promote_if_better(client, NAME, v2, _head(0.9), _params(margin=0.01), eval_set_sha=SET_A, report_path=None)
    assert again["action"] == "already_champion" and not again["changed"] and "already champion" in again["reason"]
    assert _aliases(client) == {"candidate": v2, "champion": v2, "previous-champion": v1}  # previous is not v2 itself
    # the same promoting Decision applied twice
    d = Decision(True, "by hand", "defect_accuracy", 0.9, None, 0.0, code=promotion.FIRST_RUN)
    assert promote(client, NAME, v2, d, _params(), report_path=None)["action"] == "already_champion"
    assert _aliases(client) == {"candidate": v2, "champion": v2, "previous-champion": v1}


def test_stale_decision_is_refused(client, tmp_path):
    v1 = _with_champion(client, tmp_path)
    v2, v3 = _version(tmp_path, 2), _version(tmp_path, 3)
    d2 = decide_against_champion(client, NAME, _head(0.8), _params(), eval_set_sha=SET_A)
    d3 = decide_against_champion(client, NAME, _head(0.9), _params(), eval_set_sha=SET_A)
    assert d2.champion_version == d3.champion_version == v1 and d2.promote and d3.promote
    assert promote(client, NAME, v3, d3, _params(), report_path=None)["action"] == "promoted"
    rec = promote(client, NAME, v2, d2, _params(), report_path=None)  # decided against v1, champion is v3 now
    assert rec["action"] == "stale" and not rec["changed"] and f"now version {v3}" in rec["reason"]
    assert _aliases(client)["champion"] == v3 and _aliases(client)["previous-champion"] == v1


def test_rollback_walks_the_chain(client, tmp_path):
    with pytest.raises(LookupError, match="previous-champion"):
        rollback(client, NAME)
    v1 = _with_champion(client, tmp_path, value=0.5)
    v2, v3 = _version(tmp_path, 2), _version(tmp_path, 3)
    promote_if_better(client, NAME, v2, _head(0.6), _params(), eval_set_sha=SET_A, report_path=None)
    promote_if_better(client, NAME, v3, _head(0.7), _params(), eval_set_sha=SET_A, report_path=None)
    assert _aliases(client) == {"candidate": v3, "champion": v3, "previous-champion": v2}

    report = tmp_path / "rollback.json"
    rec = rollback(client, NAME, _params(), reason="v3 answers in French", report_path=report)
    assert rec["action"] == "rolled_back" and rec["rolled_back_version"] == v3
    assert _aliases(client) == {"candidate": v3, "champion": v2, "previous-champion": v1}
    assert json.loads(report.read_text())["champion_version"] == v2
    assert client.get_model_version(NAME, str(v3)).tags["promotion.rollback_reason"] == "v3 answers in French"
    assert champion_metrics(client, NAME, "champion") == (v2, _head(0.6), SET_A)

    rollback(client, "glassllava")
    assert _aliases(client) == {"candidate": v3, "champion": v1}  # the chain's start: no previous-champion left
    with pytest.raises(LookupError):
        rollback(client, NAME)
    # the next promotion builds the chain again
    v4 = _version(tmp_path, 4)
    promote_if_better(client, NAME, v4, _head(0.9), _params(), eval_set_sha=SET_A, report_path=None)
    assert _aliases(client) == {"candidate": v4, "champion": v4, "previous-champion": v1}


def test_client_as_uri_or_from_environment(mlflow_uri, tmp_path):
    v1 = _version(tmp_path, 1)
    assert promote_if_better(mlflow_uri, NAME, v1, _head(0.5), _params(), eval_set_sha=SET_A, report_path=None)["promoted"]
    assert champion_metrics(None, NAME, "champion").version == v1  # $MLFLOW_TRACKING_URI


def test_custom_alias_names(client, tmp_path):
    p = _params(champion_alias="prod", previous_alias="prod-previous")
    v1, v2 = _version(tmp_path, 1), _version(tmp_path, 2)
    promote_if_better(client, NAME, v1, _head(0.5), p, eval_set_sha=SET_A, report_path=None)
    promote_if_better(client, NAME, v2, _head(0.6), p, eval_set_sha=SET_A, report_path=None)
    assert _aliases(client) == {"candidate": v2, "prod": v2, "prod-previous": v1}
    rollback(client, NAME, p)
    assert _aliases(client) == {"candidate": v2, "prod": v1}


def test_no_secret_reaches_the_store_or_artifacts(client, tmp_path, monkeypatch):
    secret = "sk-test-promotion-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    v1 = _version(tmp_path, 1)
    headline = {**_head(0.5), "judge_note": f"judge called with {secret}", "api_key": secret}
    report = tmp_path / "reports" / "promotion.json"
    promote_if_better(client, NAME, v1, headline, _params(), eval_set_sha=SET_A, report_path=report)
    v2 = _version(tmp_path, 2)
    promote_if_better(client, NAME, v2, {**headline, "defect_accuracy": 0.9}, _params(), eval_set_sha=SET_A, report_path=report)
    rollback(client, NAME, reason=f"rolled back by {secret}", report_path=report)

    assert _aliases(client)["champion"] == v1
    stored = client.get_model_version(NAME, str(v1)).tags
    assert stored["eval.api_key"] == tracking.REDACTED
    assert champion_metrics(client, NAME, "champion").headline["api_key"] == tracking.REDACTED
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    assert (tmp_path / "mlflow" / "mlflow.db").stat().st_size > 0 and report.is_file()
    assert any((tmp_path / "mlflow" / "mlruns").rglob("decision.json"))
