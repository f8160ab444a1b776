"""The judge: every answer of every row, scored against its QA record, by offline proxies and by an LLM.

Input: answer dicts with the keys of ``schemas.EVAL_ANSWERS_SCHEMA``. Output: judgment dicts with the keys of
``schemas.EVAL_JUDGMENTS_SCHEMA``, one per (answer, metric). ``detail`` is a JSON string.

Offline proxies (judge ``"offline"``; no LLM): smoke tests and checkpoint ranking, never stand-ins for the
paper's numbers (ROUGE-like scores track human judgement poorly; see shared/notes/evaluation.md §5).

- ``proxy_token_f1`` 0-1: SQuAD token F1, answer vs reference.
- ``proxy_rouge_l`` 0-1: ROUGE-L F1 (longest common subsequence of words).
- ``proxy_feature_recall`` 0-1: the share of gold features the answer asserts, read through a glass/SEM lexicon
  with synonyms (``read_features``); negated mentions ("no cracks are visible") do not count.
- ``proxy_feature_score`` 1-4: that recall binned as the paper's scale: 0 -> 1, < 0.5 -> 2, < 1 -> 3, 1 -> 4.
- ``proxy_hallucination`` 0-1: the share of the vocabulary features the answer asserts that are not gold
  (lower is better; 0 when it asserts none).
- ``proxy_defect`` 0/1: ``scoring.defect_claim(answer, question)`` agrees with the gold label. An answer that makes
  no defect claim did not answer the question: it scores 0 (``detail.unclear``), as an examiner would mark it.
  Only the defect questions are scored for defects.

The LLM judge (judge ``"llm:<model>@<prompt sha12>"``, ``prompts/<evaluate.judge_prompt>.md``), one request per
metric, each with a fixed JSON reply format:

- ``quality`` 0-100: reference-guided single grading with a justification.
- ``relative`` 0-100+: LLaVA-Bench style; the judge rates reference and candidate 1-10 side by side (as anonymous
  answer_1 / answer_2), relative = candidate / reference * 100. Aggregate as mean(candidate) / mean(reference)
  * 100 from ``detail`` to get LLaVA's number.
- ``features`` 1-4: the judge gets the gold features and lists matched / missed / hallucinated.
- ``defect`` 0/1: the judge only reads the claim (claims_defect 0/1/null + types); the score is computed here
  against the gold label, never by the judge.

Answers and references are untrusted data: they go into the user message as one JSON document (``<`` and ``>``
escaped, so nothing can close the block) between ``<judge_data>`` tags, and the rubric and reply format are in the
system message. Every reply is validated; a truncated, malformed or out-of-range reply is asked again
(``evaluate.llm.max_invalid_retries`` times), then recorded as ok = false with score None and the reason: a
failure, never a 0. A judgment whose justification repeats an instruction found in the answer, or that gives the
top score to an answer that addresses the judge, is flagged ``"suspicious": true``.

Every request goes through ``glassllava.llm.LLMClient`` (the cache dir is the caller's): the body holds the
prompt (so its hash), the metric, the data and the repeat index, so a re-run with everything cached makes no
request. Rows that give the same answer to the same question share one request (the key holds no row name).
An empty answer ("" when a row did not answer) gets ok = false, "empty_answer", for every metric, with no request:
the caller decides whether it counts as 0 or is left out. A record without gold features gets no feature
judgments (features, proxy_feature_recall, proxy_feature_score): the metric is not defined there.
"""

from __future__ import annotations

import json
import logging
import random
import re
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glassllava import qa_rules, scoring
from glassllava.files import sha256_bytes
from glassllava.llm import FORMAT_FALLBACK, Account, LLMClient, LLMError, Reply, llm_configured
from glassllava.params import EvaluateParams
from glassllava.qa import parse_json_object
from glassllava.qa_rules import DEFECT_FEATURES, FEATURES

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).with_name("prompts")
OFFLINE_JUDGE = "offline"
PROXY_METRICS = (
    "proxy_token_f1", "proxy_rouge_l", "proxy_feature_recall", "proxy_feature_score", "proxy_hallucination", "proxy_defect",
)
LLM_METRICS = ("quality", "relative", "features", "defect")
DEFECT_METRICS = {"proxy_defect", "defect"}
FEATURE_METRICS = {"proxy_feature_recall", "proxy_feature_score", "features"}  # need gold features: none, no judgment
Progress = Callable[[str, int, int], None]


def judgment(answer: dict, metric: str, judge: str, score: float | None, ok: bool, detail: dict, request_key: str = "") -> dict:
    """One row of ``EVAL_JUDGMENTS_SCHEMA``."""
    return {
        "row": answer["row"],
        "qa_id": answer["qa_id"],
        "metric": metric,
        "judge": judge,
        "score": None if score is None else float(score),
        "ok": ok,
        "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
        "request_key": request_key,
    }


# what an empty answer scores: the bottom of each scale (it hallucinates nothing); no request is made for it
_EMPTY_SCORE = {"proxy_feature_score": 1.0, "features": 1.0}


def _empty(answer: dict, metric: str, judge: str) -> dict:
    """A row that gave no answer scores the bottom of the scale: it is the row's failure, not the judge's."""
    return judgment(answer, metric, judge, _EMPTY_SCORE.get(metric, 0.0), True, {"empty_answer": True})


# ---- reading features in an answer --------------------------------------------------------------------------
# qa_rules' lexicon (what the offline QA generator reads in captions) with, before it, the phrases it lacks:
# clean-glass phrases that contain a defect word ("crack-free", "free of defects": a span taken here is not read
# again as a crack), generic phase separation, and synonyms. The negation and clause rules are the defect
# reader's (``scoring``), so proxy_defect and the feature proxies read "no cracks" and "except a few bubbles" alike.
PHASE_SEPARATION = "phase_separation"  # a generic mention: matches either kind of phase separation
_EXTRA_LEXICON = [
    (name, re.compile(pattern, re.I))
    for name, pattern in [
        ("homogeneous_glass", r"\b(?:defect|crack|pore|bubble|flaw|inclusion|crystal)s?[- ]free\b|"
                              r"\bfree (?:of|from) (?:any |all )?(?:visible |obvious |apparent )?(?:defects?|flaws?|imperfections?)|"
                              r"\bno (?:visible |obvious |apparent )?(?:defects?|flaws?|imperfections?)\b|"
                              r"\bflawless\b|\bpristine\b|\bfeatureless\b"),
        (PHASE_SEPARATION, r"phase[- ]separat\w*|immiscib\w*|liquid[- ]liquid (?:phase )?separation"),
        ("bulk_crystallisation", r"crystallites?|nano-?crystals?|devitrif\w*|crystalline (?:phase|particles?|precipitates?)"),
        ("unmolten_grain", r"\b(?:raw[- ]material|sand|quartz|batch|silica) (?:grains?|particles?)|undissolved \w+"),
        ("leached_layer", r"\bcorro\w*|\bweather\w*"),
        ("pore", r"cavit(?:y|ies)|\bporous\b"),
    ]
]
_LEXICON = _EXTRA_LEXICON + qa_rules._LEXICON
# Features an expert may name one for the other in an SEM image: a gold feature named as a relative is matched.
_RELATIVES = [
    {"crack", "crack_network"},
    {"pore", "bubble"},  # both black, round holes in an SEM image
    {"bulk_crystallisation", "surface_crystallisation", "dendrite", "crystalline_inclusion"},
    {"crystalline_inclusion", "unmolten_grain"},  # stones and batch relicts
    {PHASE_SEPARATION, "phase_separation_droplet", "phase_separation_interconnected"},
]
_STOPWORDS = {"the", "and", "with", "of", "in", "on", "at", "a", "an", "or", "like", "type", "shaped", "some", "small", "large"}


def related(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in _RELATIVES)


def _clauses(text: str) -> list[str]:
    """``text`` cut where a negation's reach ends, after an opening yes/no ("No, it shows cracks" asserts cracks)."""
    opening = scoring._NO.match(text) or scoring._YES.match(text)
    if opening:
        text = text[opening.end():]
    return [c for c in scoring._SEGMENT.split(text) if c and c.strip()]


def _mentions(text: str, lexicon: list[tuple[str, re.Pattern[str]]]) -> tuple[list[str], list[str]]:
    """(asserted, denied): the lexicon names mentioned in ``text``, in order, outside / inside a negation."""
    asserted: list[str] = []
    denied: list[str] = []
    for clause in _clauses(text):
        lowered = clause.lower()
        spans = list(scoring._WORD.finditer(lowered))
        words = [m.group(0) for m in spans]
        taken: list[tuple[int, int]] = []
        found: list[tuple[int, str, bool]] = []
        for name, pattern in lexicon:
            for m in pattern.finditer(lowered):
                if any(m.start() < e and s < m.end() for s, e in taken):
                    continue
                taken.append(m.span())
                i = next((k for k, w in enumerate(spans) if w.end() > m.start()), len(words) - 1)
                found.append((m.start(), name, scoring._negated(words, i, lowered[m.end():])))
        for _, name, negated in sorted(found):
            (denied if negated else asserted).append(name)
    return list(dict.fromkeys(asserted)), list(dict.fromkeys(denied))


def read_features(text: str) -> tuple[list[str], list[str]]:
    """(asserted, denied) vocabulary features of an answer (plus ``phase_separation``, a generic mention).

    "Homogeneous" is dropped once another feature is asserted ("a homogeneous distribution of crystals"), and a
    generic phase separation once a specific kind is."""
    asserted, denied = _mentions(text, _LEXICON)
    if "homogeneous_glass" in asserted and len(asserted) > 1:
        asserted.remove("homogeneous_glass")
    if PHASE_SEPARATION in asserted and any(f.startswith("phase_separation_") for f in asserted):
        asserted.remove(PHASE_SEPARATION)
    return asserted, [f for f in denied if f not in asserted]


def _stem(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _other_asserted(feature: str, text: str) -> bool:
    """An ``other:<words>`` gold feature is found when the answer asserts each of its content words."""
    words = [w for w in re.findall(r"[a-z0-9]+", feature.removeprefix("other:").lower()) if w not in _STOPWORDS and len(w) > 2]
    if not words:
        return False
    lexicon = [(w, re.compile(rf"\b{re.escape(_stem(w))}\w*", re.I)) for w in words]
    asserted, _ = _mentions(text, lexicon)
    return set(words) <= set(asserted)


@dataclass
class FeatureReading:
    gold: list[str]
    asserted: list[str]  # vocabulary features the answer asserts
    denied: list[str]  # ... and those it says are absent
    matched: dict[str, str]  # gold feature -> the feature the answer named for it
    missed: list[str]
    hallucinated: list[str]  # asserted, and neither gold nor a relative of a gold feature

    @property
    def recall(self) -> float:
        return len(self.matched) / len(self.gold)

    def as_detail(self) -> dict:
        return {"gold": self.gold, "asserted": self.asserted, "denied": self.denied, "matched": self.matched,
                "missed": self.missed, "hallucinated": self.hallucinated}


def compare_features(gold: list[str], text: str) -> FeatureReading:
    asserted, denied = read_features(text)
    matched: dict[str, str] = {}
    for g in gold:
        if g.startswith("other:"):
            if _other_asserted(g, text):
                matched[g] = g
        elif g in asserted:
            matched[g] = g
        elif (relative := next((a for a in asserted if related(g, a)), None)) is not None:
            matched[g] = relative
    vocabulary = [g for g in gold if not g.startswith("other:")]
    hallucinated = [a for a in asserted if not any(related(a, g) for g in vocabulary)]
    return FeatureReading(list(gold), asserted, denied, matched, [g for g in gold if g not in matched], hallucinated)


def feature_bin(recall: float) -> int:
    """The paper's 1-4 feature scale from a recall (notes §5: 0, < 0.5, < 1, 1)."""
    return 1 if recall == 0 else 2 if recall < 0.5 else 3 if recall < 1 else 4


# ---- offline proxies ------------------------------------------------------------------------------------------
def rouge_l(prediction: str, reference: str) -> tuple[float, float, float]:
    """ROUGE-L (F1, precision, recall) over lower-cased words: the longest common subsequence, one DP row at a time."""
    p, r = scoring._tokens(prediction), scoring._tokens(reference)
    if not p or not r:
        return 0.0, 0.0, 0.0
    previous = [0] * (len(r) + 1)
    for word in p:
        current = [0]
        for j, ref_word in enumerate(r, 1):
            current.append(previous[j - 1] + 1 if word == ref_word else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0, 0.0, 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall), precision, recall


def proxy_token_f1(answer: dict) -> dict:
    return judgment(answer, "proxy_token_f1", OFFLINE_JUDGE, scoring.token_f1(answer["answer"], answer["reference"]), True, {})


def proxy_rouge_l(answer: dict) -> dict:
    f1, precision, recall = rouge_l(answer["answer"], answer["reference"])
    return judgment(answer, "proxy_rouge_l", OFFLINE_JUDGE, f1, True, {"precision": round(precision, 4), "recall": round(recall, 4)})


def proxy_feature_recall(answer: dict) -> dict:
    reading = compare_features(answer["features"], answer["answer"])
    return judgment(answer, "proxy_feature_recall", OFFLINE_JUDGE, reading.recall, True, reading.as_detail())


def proxy_feature_score(answer: dict) -> dict:
    reading = compare_features(answer["features"], answer["answer"])
    detail = {"recall": round(reading.recall, 4), "matched": reading.matched, "missed": reading.missed}
    return judgment(answer, "proxy_feature_score", OFFLINE_JUDGE, feature_bin(reading.recall), True, detail)


def proxy_hallucination(answer: dict) -> dict:
    reading = compare_features(answer["features"], answer["answer"])
    rate = len(reading.hallucinated) / len(reading.asserted) if reading.asserted else 0.0
    detail = {"asserted": reading.asserted, "hallucinated": reading.hallucinated, "gold": reading.gold}
    return judgment(answer, "proxy_hallucination", OFFLINE_JUDGE, rate, True, detail)


def proxy_defect(answer: dict) -> dict:
    claim = scoring.defect_claim(answer["answer"], answer["question"])
    gold = bool(answer["defect_present"])
    if claim is None:  # the model did not answer yes or no: wrong, and counted as unclear (not a judge failure)
        detail = {"claim": None, "gold_present": gold, "unclear": True}
        return judgment(answer, "proxy_defect", OFFLINE_JUDGE, 0.0, True, detail)
    return judgment(answer, "proxy_defect", OFFLINE_JUDGE, float(claim == gold), True, {"claim": claim, "gold_present": gold})


_PROXIES = {
    f.__name__: f
    for f in (proxy_token_f1, proxy_rouge_l, proxy_feature_recall, proxy_feature_score, proxy_hallucination, proxy_defect)
}


def applies(answer: dict, metric: str) -> bool:
    """Is ``metric`` defined for ``answer``? The feature metrics need gold features; the defect metrics score the
    defect questions (the paper's defect and anomaly detection)."""
    if metric in DEFECT_METRICS and answer.get("question_type", "defect_detection") != "defect_detection":
        return False
    return bool(answer["features"]) or metric not in FEATURE_METRICS


def proxy_judgments(answer: dict, metrics: Sequence[str] = PROXY_METRICS) -> list[dict]:
    """Every offline proxy that applies to ``answer``."""
    empty = not answer["answer"].strip()
    return [_empty(answer, m, OFFLINE_JUDGE) if empty else _PROXIES[m](answer) for m in metrics if applies(answer, m)]


# ---- the judge prompt -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system: str  # with {{rubric}}
    user: str  # with {{request}} and {{data}}
    rubrics: dict[str, str]  # metric -> its section
    sha: str  # of the whole file

    @property
    def version(self) -> str:
        return f"{self.name}@{self.sha[:12]}"


def load_judge_prompt(name: str) -> JudgePrompt:
    path = PROMPTS_DIR / f"{name}.md"
    if not path.exists():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.md"))
        raise FileNotFoundError(f"judge prompt {name!r} not found in {PROMPTS_DIR} (have: {known})")
    raw = path.read_text(encoding="utf-8")
    sections = re.split(r"^## (\w+)\s*$", raw, flags=re.M)
    parts = dict(zip(sections[1::2], (s.strip() for s in sections[2::2])))
    missing = [s for s in ("system", "user", *LLM_METRICS) if s not in parts]
    if missing:
        raise ValueError(f"{path}: missing sections {missing}")
    if "{{rubric}}" not in parts["system"] or not {"{{request}}", "{{data}}"} <= set(re.findall(r"\{\{\w+\}\}", parts["user"])):
        raise ValueError(f"{path}: the system section needs {{{{rubric}}}}, the user section {{{{request}}}} and {{{{data}}}}")
    return JudgePrompt(name, parts["system"], parts["user"], {m: parts[m] for m in LLM_METRICS}, sha256_bytes(raw.encode()))


def _fill(template: str, fills: dict[str, str]) -> str:
    # one pass, so an answer quoting "{{rubric}}" is not expanded
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fills.get(m.group(1), m.group(0)), template)


def data_block(doc: dict) -> str:
    """Untrusted text as a JSON document that cannot close its element (``<`` and ``>`` escaped)."""
    return json.dumps(doc, ensure_ascii=False, indent=1).replace("<", "\\u003c").replace(">", "\\u003e")


def _gold_features(features: list[str]) -> list[dict]:
    return [{"name": f, "description": f.removeprefix("other:") if f.startswith("other:") else FEATURES.get(f, f)} for f in features]


def judge_data(answer: dict, metric: str, swapped: bool = False) -> dict:
    """What the judge sees for one metric (the reference is left out where it would give the gold label away)."""
    q, ref, cand = answer["question"], answer["reference"], answer["answer"]
    if metric == "quality":
        return {"question": q, "reference_answer": ref, "candidate_answer": cand}
    if metric == "relative":
        first, second = (cand, ref) if swapped else (ref, cand)
        return {"question": q, "answer_1": first, "answer_2": second}
    if metric == "features":
        return {"question": q, "reference_answer": ref, "gold_features": _gold_features(answer["features"]), "candidate_answer": cand}
    if metric == "defect":
        return {"question": q, "candidate_answer": cand}
    raise ValueError(f"unknown judge metric {metric!r} (known: {LLM_METRICS})")


# ---- reply formats --------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QualityReply(_Strict):
    justification: str
    score: float = Field(ge=0, le=100)


class RelativeReply(_Strict):
    justification: str
    score_1: float = Field(ge=1, le=10)
    score_2: float = Field(ge=1, le=10)


class FeaturesReply(_Strict):
    matched: list[str]
    missed: list[str]
    hallucinated: list[str]
    justification: str
    score: int = Field(ge=1, le=4)


class DefectReply(_Strict):
    claims_defect: Literal[0, 1] | None
    types: list[str]
    justification: str


REPLIES: dict[str, type[_Strict]] = {"quality": QualityReply, "relative": RelativeReply, "features": FeaturesReply, "defect": DefectReply}


def reply_schema(metric: str) -> dict:
    """The metric's reply format for structured outputs (strict mode: every key required, nothing else).
    Ranges are not in it (not every endpoint supports them): ``check_reply`` enforces them."""
    text, number, integer = {"type": "string"}, {"type": "number"}, {"type": "integer"}
    strings = {"type": "array", "items": text}
    props = {
        "quality": {"justification": text, "score": integer},
        "relative": {"justification": text, "score_1": number, "score_2": number},
        "features": {"matched": strings, "missed": strings, "hallucinated": strings, "justification": text, "score": integer},
        "defect": {"claims_defect": {"type": ["integer", "null"], "enum": [0, 1, None]}, "types": strings, "justification": text},
    }[metric]
    schema = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    return {"name": f"judge_{metric}", "strict": True, "schema": schema}


def check_reply(metric: str, content: str, finish_reason: str) -> tuple[dict | None, str]:
    """(the validated reply, "") or (None, why it cannot be used)."""
    if finish_reason == "length":
        return None, "truncated: the reply stopped at max_tokens"
    try:
        doc = parse_json_object(content)
    except ValueError as e:
        return None, f"malformed_json: {e}"
    try:
        return REPLIES[metric].model_validate(doc).model_dump(), ""
    except ValidationError as e:
        return None, "schema_invalid: " + "; ".join(f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}" for err in e.errors()[:3])


def _instruction_echo(answer_text: str, justification: str) -> str:
    """The run of words the justification copies from an instruction in the answer ("" when none)."""
    said = " ".join(scoring._tokens(justification))
    for part in qa_rules.model_addressed_parts(answer_text):
        words = scoring._tokens(part)
        n = min(5, len(words))
        for i in range(len(words) - n + 1):
            run = " ".join(words[i : i + n])
            if n >= 3 and f" {run} " in f" {said} ":
                return run
    return ""


def suspicion(answer_text: str, reply: dict, top_score: bool) -> list[str]:
    """Why a judgment looks manipulated by the answer it grades (empty when it does not)."""
    why = []
    echo = _instruction_echo(answer_text, reply.get("justification", ""))
    if echo:
        why.append(f"the justification repeats an instruction from the answer: {echo!r}")
    if top_score and qa_rules.addresses_model(answer_text):
        why.append("the top score went to an answer that addresses the judge")
    return why


# ---- the LLM judge --------------------------------------------------------------------------------------------
class LLMJudge:
    """An OpenAI-compatible judge through the project's client and cache; thread-safe (one client, one lock)."""

    def __init__(self, params: EvaluateParams, cache_dir: Path) -> None:
        self.params = params
        self.prompt = load_judge_prompt(params.judge_prompt)
        self.client = LLMClient(params.llm, Path(cache_dir))
        self.name = f"llm:{params.llm.model}@{self.prompt.sha[:12]}"
        self.response_format = params.llm.response_format  # weakened for good when the endpoint refuses it
        self._lock = threading.Lock()
        if params.llm.temperature != 0:
            log.warning("the judge runs at temperature %s, not 0: its grades will vary between runs", params.llm.temperature)

    def messages(self, answer: dict, metric: str, repeat: int = 0, swapped: bool = False) -> list[dict]:
        """The request: rubric and reply format in the system message, the answer only inside the data block.

        ``repeat`` > 0 marks a re-judgment (the variance check) in the request line, so that it is a new request
        and not a cache hit; repeat 0 is the judgment itself."""
        rubric = _fill(self.prompt.rubrics[metric], {"defect_features": ", ".join(sorted(DEFECT_FEATURES))})
        request = f"{self.prompt.version} metric {metric}" + (f" repeat {repeat}" if repeat else "")
        system = _fill(self.prompt.system, {"rubric": rubric})
        user = _fill(self.prompt.user, {"request": request, "data": data_block(judge_data(answer, metric, swapped))})
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _formats(self) -> list[str]:
        out = [self.response_format]
        while out[-1] in FORMAT_FALLBACK:
            out.append(FORMAT_FALLBACK[out[-1]])
        return out

    def _reply(self, messages: list[dict], metric: str) -> Reply:
        """The reply from the cache (in any format this run may have fallen back from), else from the endpoint."""
        schema = reply_schema(metric)
        for fmt in self._formats():
            hit = self.client.cached(self.client.body(messages, schema, fmt))
            if hit is not None:
                return hit
        while True:
            fmt = self.response_format
            body = self.client.body(messages, schema, fmt)
            try:
                return self.client.complete(body)
            except LLMError as e:
                weaker = FORMAT_FALLBACK.get(fmt)
                if e.status in (400, 422) and weaker and "response_format" in body:
                    with self._lock:
                        if self.response_format == fmt:
                            log.warning("the endpoint refused response_format %s (%s); the judge uses %s from now on", fmt, e, weaker)
                            self.response_format = weaker
                    continue
                raise

    def ask(self, messages: list[dict], metric: str) -> tuple[dict | None, str, str, int]:
        """(the validated reply or None, why not, the last request key, attempts): re-asks a bounded number of times."""
        why, key = "", ""
        attempts = self.params.llm.max_invalid_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                reply = self._reply(messages, metric)
            except LLMError as e:
                return None, f"request_failed: {e}", key, attempt
            key = reply.key
            doc, why = check_reply(metric, reply.content, reply.finish_reason)
            if doc is not None:
                return doc, "", key, attempt
            log.info("judge %s: reply rejected (%s)%s", metric, why, "; asking again" if attempt < attempts else "")
            messages = messages + [
                {"role": "assistant", "content": reply.content[:4000]},
                {"role": "user", "content": f"That reply was rejected: {why}. "
                                            "Reply again with only the JSON object in the format the system message fixes."},
            ]
        return None, why, key, attempts

    def judge(self, answer: dict, metric: str, repeat: int = 0, swapped: bool = False) -> dict:
        """One judgment. ``swapped`` (relative only): the candidate is shown first, the reference second."""
        if not answer["answer"].strip():
            return _empty(answer, metric, self.name)
        reply, why, key, attempts = self.ask(self.messages(answer, metric, repeat, swapped), metric)
        base = {"attempts": attempts} | ({"repeat": repeat} if repeat else {}) | ({"swapped": True} if swapped else {})
        if reply is None:
            return judgment(answer, metric, self.name, None, False, base | {"error": why}, key)
        score, ok, detail = _score(answer, metric, reply, swapped)
        flags = suspicion(answer["answer"], reply, top_score=_top_grade(metric, reply, swapped))
        if flags:
            detail |= {"suspicious": True, "suspicious_why": flags}
        return judgment(answer, metric, self.name, score, ok, base | detail, key)


def _top_grade(metric: str, reply: dict, swapped: bool) -> bool:
    """Did the judge give the candidate the best grade its scale has?"""
    if metric == "relative":
        return reply["score_1" if swapped else "score_2"] == 10
    return metric in ("quality", "features") and reply["score"] == (100 if metric == "quality" else 4)


def _score(answer: dict, metric: str, reply: dict, swapped: bool) -> tuple[float | None, bool, dict]:
    """(score, ok, detail) from a validated reply; the defect score is decided here, against the gold label."""
    justification = reply["justification"]
    if metric == "quality":
        return reply["score"], True, {"justification": justification}
    if metric == "relative":
        candidate, reference = (reply["score_1"], reply["score_2"]) if swapped else (reply["score_2"], reply["score_1"])
        detail = {"reference_score": reference, "candidate_score": candidate, "justification": justification}
        return candidate / reference * 100, True, detail
    if metric == "features":
        detail = {k: reply[k] for k in ("matched", "missed", "hallucinated")} | {"gold": answer["features"], "justification": justification}
        return reply["score"], True, detail
    gold, gold_types = bool(answer["defect_present"]), list(answer["defect_types"])
    claims = reply["claims_defect"]
    detail = {"claims_defect": claims, "types": reply["types"], "gold_present": gold, "gold_types": gold_types,
              "justification": justification}
    if claims is None:  # the judge read no claim in the answer: the model did not answer, so it is wrong
        return 0.0, True, detail | {"unclear": True}
    both = bool(claims) and gold
    detail["types_overlap"] = bool(set(reply["types"]) & set(gold_types)) if both else None
    return float(bool(claims) == gold), True, detail


# ---- the stage's entry points -----------------------------------------------------------------------------------
def resolve_mode(params: EvaluateParams) -> Literal["offline", "llm"]:
    """``evaluate.judge`` as set in params (a tracked input); ``llm`` without an endpoint is an error, before any work."""
    if params.judge == "llm" and not llm_configured(params.llm):
        raise LLMError(f"evaluate.judge is llm but no endpoint is configured: set ${params.llm.api_key_env} "
                       "(and optionally evaluate.llm.base_url or $OPENAI_BASE_URL), or set evaluate.judge: offline")
    return params.judge


def _run(tasks: list, work: Callable, workers: int, progress: Progress | None, label: str) -> list:
    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, result in enumerate(pool.map(lambda t: work(*t), tasks), 1):
            out.append(result)
            if progress:
                progress(label, n, len(tasks))
    return out


def judge_answers(
    answers: list[dict],
    params: EvaluateParams,
    cache_dir: Path,
    mode: Literal["offline", "llm"] | None = None,
    *,
    metrics: Sequence[str] = LLM_METRICS,
    progress: Progress | None = None,
) -> tuple[list[dict], dict]:
    """Judgments of every answer, and what the LLM requests of this run cost (``Account.as_dict``).

    ``mode``: "offline" (the proxies), "llm" (the proxies and the LLM ``metrics``); None: from ``evaluate.judge``.
    Requests run ``evaluate.llm.concurrency`` at a time; ``progress("judge", done, total)`` after each."""
    mode = mode or resolve_mode(params)
    judgments = [j for a in answers for j in proxy_judgments(a)]
    if mode == "offline":
        if progress:
            progress("judge", len(answers), len(answers))
        return judgments, Account().as_dict()
    judge = LLMJudge(params, cache_dir)
    tasks = [(a, m) for a in answers for m in metrics if applies(a, m)]
    judgments += _run(tasks, judge.judge, params.llm.concurrency, progress, "judge")
    account = judge.client.account.as_dict()
    log.info("judge %s: %d judgments, %d requests, %d cache hits, $%.4f",
             judge.name, len(judgments), account["requests"], account["cache_hits"], account["cost_usd"])
    return judgments, account


def _spread(scores: list[float]) -> tuple[float, float]:
    """(population std, mean absolute difference over pairs) of one item's repeated scores."""
    pairs = list(combinations(scores, 2))
    return statistics.pstdev(scores), sum(abs(a - b) for a, b in pairs) / len(pairs)


def _preference(j: dict) -> int:
    d = json.loads(j["detail"])
    return (d["candidate_score"] > d["reference_score"]) - (d["candidate_score"] < d["reference_score"])


def judge_variance(
    answers: list[dict],
    metrics: Sequence[str] = ("quality", "relative"),
    k: int = 3,
    subset_size: int = 30,
    seed: int = 0,
    *,
    judge: LLMJudge,
    progress: Progress | None = None,
) -> dict:
    """The judge's spread: a seeded subset of the answers judged ``k`` times per metric, and for ``relative`` once
    more with reference and candidate swapped (position bias).

    Repeat 0 is the judgment ``judge_answers`` made (a cache hit when it ran first); repeats 1..k-1 carry their
    index in the request, so they are real requests (cached too: a re-run costs nothing). At temperature 0 a
    deterministic endpoint may answer every repeat alike: a spread of 0 then says little about a sampling judge.

    Returns, per metric: items (with every repeat ok), failed, mean_std, max_std, mean_abs_diff (mean over items of
    the mean |difference| between two repeats) and per_item; for relative also ``swap``: items,
    disagreement_rate (the preferred answer, candidate vs reference with ties apart, changes with the order) and
    mean_abs_diff of the relative score."""
    if k < 2:
        raise ValueError(f"judge_variance needs k >= 2 repeats to measure a spread, got {k}")
    pool = [a for a in answers if a["answer"].strip()]
    subset = random.Random(seed).sample(pool, min(subset_size, len(pool)))
    tasks = [(a, m, r, False) for a in subset for m in metrics if applies(a, m) for r in range(k)]
    if "relative" in metrics:
        tasks += [(a, "relative", 0, True) for a in subset]
    results = _run(tasks, judge.judge, judge.params.llm.concurrency, progress, "judge variance")
    by_task = {(a["row"], a["qa_id"], m, r, s): j for (a, m, r, s), j in zip(tasks, results)}
    out: dict = {"judge": judge.name, "k": k, "subset": len(subset), "seed": seed, "metrics": {}}
    for m in metrics:
        per_item, failed = [], 0
        for a in subset:
            if not applies(a, m):
                continue
            js = [by_task[(a["row"], a["qa_id"], m, r, False)] for r in range(k)]
            if not all(j["ok"] for j in js):
                failed += 1
                continue
            scores = [j["score"] for j in js]
            std, mad = _spread(scores)
            per_item.append({"row": a["row"], "qa_id": a["qa_id"], "scores": scores, "std": std, "mean_abs_diff": mad})
        stds = [p["std"] for p in per_item]
        out["metrics"][m] = {
            "items": len(per_item),
            "failed": failed,
            "mean_std": statistics.fmean(stds) if stds else None,
            "max_std": max(stds) if stds else None,
            "mean_abs_diff": statistics.fmean(p["mean_abs_diff"] for p in per_item) if per_item else None,
            "per_item": per_item,
        }
    if "relative" in metrics:
        pairs = [(by_task[(a["row"], a["qa_id"], "relative", 0, False)], by_task[(a["row"], a["qa_id"], "relative", 0, True)])
                 for a in subset]
        pairs = [(o, s) for o, s in pairs if o["ok"] and s["ok"]]
        out["metrics"]["relative"]["swap"] = {
            "items": len(pairs),
            "disagreement_rate": sum(_preference(o) != _preference(s) for o, s in pairs) / len(pairs) if pairs else None,
            "mean_abs_diff": statistics.fmean(abs(o["score"] - s["score"]) for o, s in pairs) if pairs else None,
        }
    return out
