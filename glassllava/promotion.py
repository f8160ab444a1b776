"""Promotion: a candidate model version becomes ``champion`` in the MLflow registry only when it beats the champion.

The rule (``PromotionParams``): on the **same evaluation set**, the candidate's ``metric`` (a key of the evaluation's
headline dict, higher is better) must exceed the champion's by more than ``margin``; with ``require_significant``
the candidate's 95 % interval lower bound (``<metric>_lo``) must also exceed the champion's upper bound
(``<metric>_hi``).

* ``decide(candidate, champion, params, eval_set_sha=..., champion_eval_set_sha=...)``: the pure rule, a ``Decision``.
  No champion yet: promote (first run). The champion was measured on another evaluation set (new papers arrived, or
  it was never evaluated): ``needs_champion_reeval`` and no decision; the caller evaluates the champion model on the
  current set, stores it with ``record_evaluation`` and decides again.
* ``champion_metrics(client, registered_model, alias)`` / ``record_evaluation(client, registered_model, version,
  headline, eval_set_sha)``: **a version's latest evaluation lives in its model version tags**: ``eval.<key>`` (one
  tag per headline value, JSON-encoded so numbers come back as numbers), ``eval_set_sha``, ``eval_recorded_at`` and
  optionally ``eval_run_id``. Version tags, not run metrics, because the champion is re-evaluated later without a new
  training run, and a run's metrics from different evaluation sets could not be told apart.
* ``promote(client, registered_model, candidate_version, decision, params, report_path=...)``: applies a decision.
  Promoting moves ``previous_alias`` (``previous-champion``) to the old champion and ``champion_alias`` to the
  candidate; the candidate version is tagged with the decision (``promotion.*``), the candidate's MLflow run gets the
  decision as params/metrics/tags and ``promotion/decision.json``, and ``report_path`` (``reports/promotion.json``)
  is written atomically. A decision not to promote changes no alias but is recorded the same way. Promoting the
  current champion again is a no-op; a decision made against a champion that has moved since is refused.
* ``promote_if_better(...)``: the whole step for a flow: read the champion, decide, re-evaluate the champion through a
  callback when its numbers are from another set, promote.
* ``rollback(client, registered_model, params)``: ``previous-champion`` becomes ``champion`` again.

Everything written to MLflow and to the report passes through ``glassllava.tracking``'s secret redaction.
Plain library: no Prefect.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from glassllava import tracking
from glassllava.files import atomic_write_json
from glassllava.params import PromotionParams

log = logging.getLogger(__name__)

REPORT_SCHEMA = "glassllava.promotion/1"
DEFAULT_REPORT = "reports/promotion.json"
EVAL_TAG_PREFIX = "eval."  # eval.<headline key> = JSON value
EVAL_SET_TAG = "eval_set_sha"
EVAL_AT_TAG = "eval_recorded_at"
EVAL_RUN_TAG = "eval_run_id"
PROMOTION_TAG_PREFIX = "promotion."
PREVIOUS_VERSION_TAG = "promotion.previous_version"  # on a champion: the champion it replaced (the rollback chain)
DECISION_ARTIFACT = "promotion/decision.json"

# Decision.code values
FIRST_RUN = "first_run"
BEATS_CHAMPION = "beats_champion"
BELOW_MARGIN = "below_margin"
NOT_SIGNIFICANT = "not_significant"
MISSING_METRIC = "missing_metric"
MISSING_INTERVAL = "missing_interval"
NEEDS_REEVAL = "needs_champion_reeval"


@dataclass
class Decision:
    """Outcome of ``decide``. ``promote`` and ``needs_champion_reeval`` are never both true."""

    promote: bool
    reason: str
    metric: str
    candidate_value: float | None
    champion_value: float | None
    margin: float
    needs_champion_reeval: bool = False
    code: str = ""  # one of FIRST_RUN, BEATS_CHAMPION, BELOW_MARGIN, NOT_SIGNIFICANT, MISSING_METRIC, ...
    require_significant: bool = False
    candidate_lo: float | None = None  # <metric>_lo of the candidate (read when require_significant)
    champion_hi: float | None = None  # <metric>_hi of the champion
    eval_set_sha: str | None = None  # the set the candidate was evaluated on
    champion_eval_set_sha: str | None = None  # the set the champion's numbers come from
    champion_version: int | None = None  # the champion compared against, when known (set by decide_against_champion)
    candidate_headline: dict[str, Any] = field(default_factory=dict)
    champion_headline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChampionEval(NamedTuple):
    version: int
    headline: dict[str, Any]  # {} when the version was never evaluated
    eval_set_sha: str | None


# --- the rule ------------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite number, else None (missing, text, bool, NaN, inf)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _keys(headline: Mapping[str, Any]) -> str:
    return ", ".join(sorted(map(str, headline))) or "nothing"


def decide(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    params: PromotionParams,
    *,
    eval_set_sha: str,
    champion_eval_set_sha: str | None,
) -> Decision:
    """Whether ``candidate`` (an evaluation headline) should replace ``champion`` (its headline; None: no champion).

    In this order: the candidate lacks ``params.metric`` (or it is not a finite number) → no promotion, even on
    the first run (a broken evaluation must not become champion); no champion → promote; the champion's numbers
    come from another evaluation set (``champion_eval_set_sha != eval_set_sha``, None: never evaluated) →
    ``needs_champion_reeval``, no promotion; the champion lacks the metric → no promotion; candidate ≤ champion +
    margin → keep the champion; ``require_significant`` and ``<metric>_lo`` of the candidate ≤ ``<metric>_hi`` of the
    champion (or either interval missing) → keep; else promote. Strict comparisons: a tie never promotes.
    """
    metric, margin = params.metric, float(params.margin)
    cand = _number((candidate or {}).get(metric))
    base: dict[str, Any] = dict(
        metric=metric,
        candidate_value=cand,
        champion_value=None,
        margin=margin,
        require_significant=params.require_significant,
        eval_set_sha=eval_set_sha,
        champion_eval_set_sha=champion_eval_set_sha,
        candidate_headline=dict(candidate or {}),
        champion_headline=dict(champion) if champion is not None else None,
    )
    if cand is None:
        return Decision(
            False,
            f"the candidate's evaluation has no number for {metric!r} (it has: {_keys(candidate or {})}): not promoted",
            code=MISSING_METRIC,
            **base,
        )
    if champion is None:
        return Decision(True, f"no champion yet: first model promoted ({metric}={_g(cand)})", code=FIRST_RUN, **base)
    if champion_eval_set_sha != eval_set_sha:
        measured = f"evaluation set {champion_eval_set_sha}" if champion_eval_set_sha else "no recorded evaluation"
        return Decision(
            False,
            f"the champion's numbers come from {measured}, the candidate's from {eval_set_sha}: "
            "re-evaluate the champion on the current evaluation set, then decide again",
            needs_champion_reeval=True,
            code=NEEDS_REEVAL,
            **base,
        )
    champ = _number(champion.get(metric))
    base["champion_value"] = champ
    if champ is None:
        return Decision(
            False,
            f"the champion's evaluation has no number for {metric!r} (it has: {_keys(champion)}): not promoted; "
            "re-evaluate the champion with the current evaluation settings to compare",
            code=MISSING_METRIC,
            **base,
        )
    delta = cand - champ
    if not cand > champ + margin:
        return Decision(
            False,
            f"candidate {metric}={_g(cand)} does not beat champion {_g(champ)} by more than the margin {margin:g} "
            f"(difference {delta:+.4g}): champion kept",
            code=BELOW_MARGIN,
            **base,
        )
    reason = f"candidate {metric}={_g(cand)} beats champion {_g(champ)} by {delta:+.4g} (margin {margin:g})"
    if params.require_significant:
        lo = _number(candidate.get(f"{metric}_lo"))
        hi = _number(champion.get(f"{metric}_hi"))
        base.update(candidate_lo=lo, champion_hi=hi)
        if lo is None or hi is None:
            missing = [name for name, v in ((f"candidate's {metric}_lo", lo), (f"champion's {metric}_hi", hi)) if v is None]
            return Decision(
                False,
                f"{reason}, but significance is required and the {' and the '.join(missing)} is missing: champion kept",
                code=MISSING_INTERVAL,
                **base,
            )
        if not lo > hi:
            return Decision(
                False,
                f"{reason}, but not significantly: the candidate's 95 % lower bound {_g(lo)} does not exceed the "
                f"champion's upper bound {_g(hi)}: champion kept",
                code=NOT_SIGNIFICANT,
                **base,
            )
        reason += f"; significant: 95 % lower bound {_g(lo)} > champion's upper bound {_g(hi)}"
    return Decision(True, reason + ": promoted", code=BEATS_CHAMPION, **base)


# --- the registry ----------------------------------------------------------------------------------------------------


def _as_client(client: MlflowClient | str | None) -> MlflowClient:
    """An ``MlflowClient``, a tracking URI, or None (``glassllava.tracking.tracking_uri()``)."""
    if isinstance(client, MlflowClient):
        return client
    if client is None:
        return tracking._client()
    return MlflowClient(str(client))


def _aliases(client: MlflowClient, name: str) -> dict[str, int]:
    """Alias → version of registered model ``name``; {} when it does not exist."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def _version_number(version: ModelVersion | int | str) -> int:
    return int(version.version if isinstance(version, ModelVersion) else version)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def version_evaluation(mv: ModelVersion) -> tuple[dict[str, Any], str | None]:
    """The headline and evaluation set stored on a model version by ``record_evaluation`` (``{}``, None if none)."""
    tags = mv.tags or {}
    headline = {k[len(EVAL_TAG_PREFIX):]: _decode(v) for k, v in tags.items() if k.startswith(EVAL_TAG_PREFIX)}
    return headline, tags.get(EVAL_SET_TAG) or None


def champion_metrics(client: MlflowClient | str | None, registered_model: str, alias: str = "champion") -> ChampionEval | None:
    """``(version, headline, eval_set_sha)`` of ``registered_model@alias``; None when there is no such alias (or model).

    The headline is the version's latest ``record_evaluation`` (version tags ``eval.<key>``); a version never evaluated
    gives ``{}`` and ``eval_set_sha`` None, which ``decide`` answers with ``needs_champion_reeval``.
    """
    client = _as_client(client)
    version = _aliases(client, registered_model).get(alias)
    if version is None:
        return None
    headline, sha = version_evaluation(client.get_model_version(registered_model, str(version)))
    return ChampionEval(version, headline, sha)


def record_evaluation(
    client: MlflowClient | str | None,
    registered_model: str,
    version: ModelVersion | int | str,
    headline: Mapping[str, Any],
    eval_set_sha: str,
    *,
    eval_run_id: str | None = None,
) -> None:
    """Store ``headline`` (measured on evaluation set ``eval_set_sha``) as the latest evaluation of a model version.

    Tags ``eval.<key>`` (scalar values, JSON-encoded; nested values are skipped), ``eval_set_sha``,
    ``eval_recorded_at`` and ``eval_run_id`` (the MLflow run that evaluated it, when given). ``eval.*`` tags of an
    earlier evaluation that this headline lacks are deleted, so no stale number survives a re-evaluation.
    Secret-looking keys and values are redacted.
    """
    if not eval_set_sha:
        raise ValueError("record_evaluation needs the evaluation set's sha (eval_set_sha)")
    client = _as_client(client)
    number = str(_version_number(version))
    mv = client.get_model_version(registered_model, number)
    values = {}
    for key, value in headline.items():
        if isinstance(value, (Mapping, list, tuple)):
            log.debug("headline %s is not a scalar: not stored on the version", key)
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN; decide() reads None as missing either way
        values[f"{EVAL_TAG_PREFIX}{key}"] = json.dumps(value)
    tags = tracking.clean_tags(
        {**values, EVAL_SET_TAG: eval_set_sha, EVAL_AT_TAG: _now(), **({EVAL_RUN_TAG: eval_run_id} if eval_run_id else {})}
    )
    for key in mv.tags or {}:
        if key.startswith(EVAL_TAG_PREFIX) and key not in tags:
            client.delete_model_version_tag(registered_model, number, key)
    if not eval_run_id and EVAL_RUN_TAG in (mv.tags or {}):
        client.delete_model_version_tag(registered_model, number, EVAL_RUN_TAG)
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, number, key, value)


def decide_against_champion(
    client: MlflowClient | str | None,
    registered_model: str,
    candidate: Mapping[str, Any],
    params: PromotionParams,
    *,
    eval_set_sha: str,
) -> Decision:
    """``decide`` with the champion read from the registry (``champion_metrics``); sets ``Decision.champion_version``."""
    found = champion_metrics(client, registered_model, params.champion_alias)
    if found is None:
        return decide(candidate, None, params, eval_set_sha=eval_set_sha, champion_eval_set_sha=None)
    decision = decide(candidate, found.headline, params, eval_set_sha=eval_set_sha, champion_eval_set_sha=found.eval_set_sha)
    decision.champion_version = found.version
    return decision


def _log_to_run(client: MlflowClient, run_id: str | None, record: Mapping[str, Any]) -> bool:
    """The decision on the candidate's run: params (only new keys: a param never changes), metrics, tags, artifact."""
    if not run_id:
        return False
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        log.warning("the candidate's run %s is not in the store: decision not logged to it", run_id)
        return False
    decision = record["decision"]
    params = tracking.clean_params(
        {
            "promotion.metric": decision["metric"],
            "promotion.margin": decision["margin"],
            "promotion.require_significant": decision["require_significant"],
        }
    )
    logged = run.data.params
    if changed := sorted(k for k, v in params.items() if k in logged and logged[k] != v):
        log.info("run %s keeps its logged %s (the latest values are in its promotion.* tags)", run_id, ", ".join(changed))
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    step = sum(1 for _ in client.get_metric_history(run_id, "promotion.promoted"))  # one step per decision
    metrics = {
        "promotion.promoted": 1.0 if record["promoted"] else 0.0,
        "promotion.candidate_value": decision["candidate_value"],
        "promotion.champion_value": decision["champion_value"],
    }
    tags = tracking.clean_tags(
        {
            "promotion.action": record["action"],
            "promotion.reason": record["reason"],
            "promotion.metric": decision["metric"],
            "promotion.margin": decision["margin"],
            "promotion.require_significant": str(decision["require_significant"]).lower(),
            "promotion.eval_set_sha": decision["eval_set_sha"],
            "promotion.registered_model": record["registered_model"],
            "promotion.candidate_version": record["candidate_version"],
            "promotion.champion_version": record["champion_version"],
            "promotion.decided_at": record["decided_at"],
        }
    )
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None],
        params=[Param(k, v) for k, v in params.items() if k not in logged],
        tags=[RunTag(k, v) for k, v in tags.items()],
        synchronous=True,
    )
    client.log_dict(run_id, tracking.redact(dict(record)), DECISION_ARTIFACT)
    return True


def _tag_version(client: MlflowClient, name: str, version: int, tags: Mapping[str, Any]) -> None:
    for key, value in tracking.clean_tags(tags).items():
        client.set_model_version_tag(name, str(version), key, value)


def _same_evaluation(mv: ModelVersion, decision: Decision) -> bool:
    """The version already holds ``decision``'s candidate evaluation (``promote_if_better`` recorded it)."""
    headline, sha = version_evaluation(mv)
    wanted = {str(k): v for k, v in decision.candidate_headline.items() if not isinstance(v, (Mapping, list, tuple))}
    return sha == decision.eval_set_sha and headline == wanted


def _write_report(report_path: str | os.PathLike | None, record: Mapping[str, Any]) -> None:
    if report_path is not None:
        atomic_write_json(report_path, tracking.redact(dict(record)))


def promote(
    client: MlflowClient | str | None,
    registered_model: str,
    candidate_version: ModelVersion | int | str,
    decision: Decision,
    params: PromotionParams,
    *,
    report_path: str | os.PathLike | None = DEFAULT_REPORT,
) -> dict[str, Any]:
    """Apply ``decision`` to ``registered_model`` version ``candidate_version``; returns the record (also the report).

    ``action`` in the record: ``promoted`` (``previous_alias`` → the old champion, if any, then ``champion_alias`` →
    the candidate), ``kept`` (the decision was not to promote), ``needs_champion_reeval`` (no decision yet),
    ``already_champion`` (the candidate is the champion already: nothing changes) or ``stale`` (the decision was made
    against another champion than the current one, e.g. a concurrent promotion: nothing changes; decide again).
    Only ``promoted`` moves aliases. In every case the candidate's evaluation (``decision.candidate_headline``) is
    stored on its version (``record_evaluation``), the version gets ``promotion.*`` tags (action, reason, metric,
    values, eval set sha, time), the candidate's run gets the decision (params ``promotion.metric/margin/
    require_significant``, metrics ``promotion.promoted/candidate_value/champion_value``, ``promotion.*`` tags,
    artifact ``promotion/decision.json``) and ``report_path`` is written atomically (None: no file).
    """
    client = _as_client(client)
    number = _version_number(candidate_version)
    mv = client.get_model_version(registered_model, str(number))  # raises for an unknown version
    before = _aliases(client, registered_model)
    champion_before = before.get(params.champion_alias)
    previous_before = before.get(params.previous_alias)

    if decision.candidate_headline and decision.eval_set_sha and not _same_evaluation(mv, decision):
        record_evaluation(client, registered_model, number, decision.candidate_headline, decision.eval_set_sha)

    if champion_before == number:
        action, reason = "already_champion", f"version {number} is already {params.champion_alias}: nothing to do"
    elif decision.needs_champion_reeval:
        action, reason = "needs_champion_reeval", decision.reason
    elif not decision.promote:
        action, reason = "kept", decision.reason
    elif (decision.champion_version is not None and decision.champion_version != champion_before) or (
        decision.code == FIRST_RUN and champion_before is not None
    ):
        compared = f"version {decision.champion_version}" if decision.champion_version is not None else "no champion"
        action = "stale"
        reason = (
            f"the decision was made against {compared}, but {params.champion_alias} is now version {champion_before}: "
            "nothing changed; decide again"
        )
    else:
        action, reason = "promoted", decision.reason

    decided_at = _now()
    if action == "promoted":
        if champion_before is not None:
            client.set_registered_model_alias(registered_model, params.previous_alias, str(champion_before))
            _tag_version(client, registered_model, champion_before, {"promotion.replaced_by": number, "promotion.replaced_at": decided_at})
        client.set_registered_model_alias(registered_model, params.champion_alias, str(number))
        _tag_version(
            client, registered_model, number, {"promotion.promoted_at": decided_at, PREVIOUS_VERSION_TAG: champion_before}
        )
        if champion_before is None and PREVIOUS_VERSION_TAG in (mv.tags or {}):  # a re-promoted version starts a chain
            client.delete_model_version_tag(registered_model, str(number), PREVIOUS_VERSION_TAG)
        log.info("%s version %d is now @%s (%s)", registered_model, number, params.champion_alias, reason)
    else:
        log.info("%s version %d not promoted: %s", registered_model, number, reason)

    after = _aliases(client, registered_model)
    record: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "action": action,
        "promoted": action == "promoted",
        "changed": action == "promoted",
        "reason": reason,
        "registered_model": registered_model,
        "candidate_version": number,
        "candidate_run_id": mv.run_id or None,
        "champion_alias": params.champion_alias,
        "previous_alias": params.previous_alias,
        "champion_version_before": champion_before,
        "previous_champion_version_before": previous_before,
        "champion_version": after.get(params.champion_alias),
        "previous_champion_version": after.get(params.previous_alias),
        "decided_at": decided_at,
        "params": params.model_dump(mode="json"),
        "decision": decision.to_dict(),
    }
    _tag_version(
        client,
        registered_model,
        number,
        {
            "promotion.action": action,
            "promotion.reason": reason,
            "promotion.metric": decision.metric,
            "promotion.candidate_value": decision.candidate_value,
            "promotion.champion_value": decision.champion_value,
            "promotion.champion_version": champion_before,
            "promotion.eval_set_sha": decision.eval_set_sha,
            "promotion.decided_at": decided_at,
        },
    )
    record["logged_to_run"] = _log_to_run(client, mv.run_id, record)
    _write_report(report_path, record)
    return record


def promote_if_better(
    client: MlflowClient | str | None,
    registered_model: str,
    candidate_version: ModelVersion | int | str,
    candidate_headline: Mapping[str, Any],
    params: PromotionParams,
    *,
    eval_set_sha: str,
    report_path: str | os.PathLike | None = DEFAULT_REPORT,
    reevaluate: Callable[[ModelVersion], Mapping[str, Any]] | None = None,
    candidate_eval_run_id: str | None = None,
) -> dict[str, Any]:
    """The promotion step: decide against the current champion and ``promote``.

    When the champion's stored evaluation comes from another evaluation set, ``reevaluate(champion_version)`` (the
    champion's headline on the current set, e.g. the evaluate stage run on ``models:/<name>/<version>``) is called
    once, stored with ``record_evaluation`` and the decision is made again; without ``reevaluate`` the record says
    ``needs_champion_reeval`` and nothing changes.
    """
    client = _as_client(client)
    number = _version_number(candidate_version)
    record_evaluation(client, registered_model, number, candidate_headline, eval_set_sha, eval_run_id=candidate_eval_run_id)
    decision = decide_against_champion(client, registered_model, candidate_headline, params, eval_set_sha=eval_set_sha)
    if decision.needs_champion_reeval and reevaluate is not None and decision.champion_version != number:
        champion = client.get_model_version(registered_model, str(decision.champion_version))
        log.info("re-evaluating %s version %s on evaluation set %s", registered_model, champion.version, eval_set_sha)
        record_evaluation(client, registered_model, champion.version, dict(reevaluate(champion)), eval_set_sha)
        decision = decide_against_champion(client, registered_model, candidate_headline, params, eval_set_sha=eval_set_sha)
    return promote(client, registered_model, number, decision, params, report_path=report_path)


def rollback(
    client: MlflowClient | str | None,
    registered_model: str,
    params: PromotionParams | None = None,
    *,
    reason: str = "manual rollback",
    report_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Make ``previous-champion`` the champion again; returns the record (also written to ``report_path`` if given).

    The rolled-back version is tagged ``promotion.rolled_back_at``/``promotion.rollback_reason`` and keeps no alias.
    ``previous-champion`` then moves one step back along the chain (the version that the restored champion had
    replaced, its ``promotion.previous_version`` tag) or is removed at the chain's start, so a second rollback
    never brings back the version just rolled back. Raises LookupError when there is no previous champion.
    """
    params = params or PromotionParams()
    client = _as_client(client)
    aliases = _aliases(client, registered_model)
    current, previous = aliases.get(params.champion_alias), aliases.get(params.previous_alias)
    if previous is None:
        raise LookupError(f"registered model {registered_model!r} has no {params.previous_alias!r} version to roll back to")
    restored = client.get_model_version(registered_model, str(previous))
    older = (restored.tags or {}).get(PREVIOUS_VERSION_TAG)
    older = int(older) if older and older.isdigit() and int(older) not in (current, previous) else None
    when = _now()
    client.set_registered_model_alias(registered_model, params.champion_alias, str(previous))
    if older is not None:
        client.set_registered_model_alias(registered_model, params.previous_alias, str(older))
    else:
        client.delete_registered_model_alias(registered_model, params.previous_alias)
    if current is not None:
        _tag_version(client, registered_model, current, {"promotion.rolled_back_at": when, "promotion.rollback_reason": reason})
    _tag_version(client, registered_model, previous, {"promotion.restored_at": when})
    after = _aliases(client, registered_model)
    record = {
        "schema": REPORT_SCHEMA,
        "action": "rolled_back",
        "promoted": False,
        "changed": True,
        "reason": reason,
        "registered_model": registered_model,
        "rolled_back_version": current,
        "champion_version_before": current,
        "previous_champion_version_before": previous,
        "champion_version": after.get(params.champion_alias),
        "previous_champion_version": after.get(params.previous_alias),
        "champion_alias": params.champion_alias,
        "previous_alias": params.previous_alias,
        "decided_at": when,
    }
    log.warning("%s rolled back: version %s is @%s again (was %s): %s", registered_model, previous, params.champion_alias, current, reason)
    _write_report(report_path, record)
    return record
