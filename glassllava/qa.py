"""Stage ``qa``: question-answer records for every SEM panel, grounded in the paper.

Inputs: ``figures/panels.parquet``, ``figures/figures.parquet``, ``ingest/paragraphs.parquet``,
``ingest/papers.parquet``. Outputs under ``qa/``:

- ``train.parquet`` / ``eval.parquet`` (``schemas.QA_SCHEMA``): split by paper, never by image, with a
  salted hash of the paper's sha256, so a paper keeps its side as papers are added;
- ``rejected.parquet`` (``schemas.QA_REJECTED_SCHEMA``): every record or reply refused, with its reason;
- ``report.json`` and ``index.html``: counts, cost, and QA examples next to their panels;
- ``panels/<key>.json``: per-panel results, keyed by the panel's inputs, the generator, the prompt
  file's hash, the sampling params and this code: a re-run with nothing new reads them and does no work;
- ``cache/``: the LLM request cache (``glassllava.llm``), ``batches/``: open Batch API jobs.

Two generators write the same records. ``llm`` asks an OpenAI-compatible model with the prompt in
``prompts/<qa.prompt>.md``; ``offline`` (``glassllava.qa_rules``) needs no key. Both go through the
same validation: JSON schema, requested slots, the feature vocabulary, defect consistency, and
evidence that must be quoted verbatim from the caption or a paragraph, an answer whose yes/no (read
through the question's polarity: "free of defects?" vs "any defects?") agrees with its defect label, an
answer that says something, and no text addressed to a model (paper text is data). A record that fails is
never written to the dataset; a reply that is truncated or not JSON is asked again (a bounded number of
times) with the reason, then rejected.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glassllava import qa_rules, scoring
from glassllava.files import atomic_write_json, atomic_write_text, read_json, sha256_bytes, sha256_json
from glassllava.llm import FORMAT_FALLBACK, LLMClient, LLMError, Reply, cost_usd, llm_configured
from glassllava.params import CONTEXT_LEVELS, QUESTION_TYPES, DataLayout, QAParams
from glassllava.qa_rules import DEFECT_FEATURES, FEATURES, PanelText
from glassllava.schemas import QA_REJECTED_SCHEMA, QA_SCHEMA, table_from_rows, write_table

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).with_name("prompts")
REJECT_REASONS = (
    "truncated",  # the reply hit max_tokens
    "malformed_json",  # not a JSON object
    "schema_invalid",  # JSON, but not the record format
    "unrequested_slot",  # a type/level pair not asked for, or asked once and answered twice
    "unknown_feature",  # a feature outside the vocabulary
    "inconsistent_defect",  # defect.present disagrees with defect.types, or a type not among the features
    "ungrounded",  # evidence not found verbatim in the caption or the named paragraph
    "context_leak",  # a "none" question that gives context away
    "contradicts_defect",  # the answer's yes/no (read through the question's polarity) or its text denies the defect label
    "uninformative",  # the answer only says nothing can be said ("no distinct features"): not a training record
    "instruction_text",  # the question or answer carries text addressed to a model ("ignore previous instructions ...")
    "request_failed",  # the endpoint failed for good (retries exhausted, auth error ...)
)
_CODE_FILES = ("qa.py", "qa_rules.py", "scoring.py")  # scoring: the defect-claim reader the validator uses


# ---- the record format -----------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Evidence(_Strict):
    source: str
    text: str = Field(min_length=1)


class Defect(_Strict):
    present: bool
    types: list[str]


class QARecord(_Strict):
    question: str = Field(min_length=8)
    answer: str = Field(min_length=2)
    question_type: Literal["description", "feature_identification", "defect_detection", "complex_reasoning"]
    complexity: Literal["simple", "complex"]
    context_level: Literal["none", "low", "moderate", "high"]
    context_types: list[Literal["material", "composition", "processing", "imaging", "aim"]]
    features: list[str]
    defect: Defect
    evidence: list[Evidence] = Field(min_length=1, max_length=6)


def reply_json_schema() -> dict:
    """The reply format for structured outputs (OpenAI strict mode: every key required, no extras)."""

    def obj(props: dict) -> dict:
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    string_list = {"type": "array", "items": {"type": "string"}}
    record = obj(
        {
            "question": {"type": "string"},
            "answer": {"type": "string"},
            "question_type": {"type": "string", "enum": list(QUESTION_TYPES)},
            "complexity": {"type": "string", "enum": ["simple", "complex"]},
            "context_level": {"type": "string", "enum": list(CONTEXT_LEVELS)},
            "context_types": {"type": "array", "items": {"type": "string", "enum": list(qa_rules.CONTEXT_TYPES)}},
            "features": string_list,
            "defect": obj({"present": {"type": "boolean"}, "types": string_list}),
            "evidence": {"type": "array", "items": obj({"source": {"type": "string"}, "text": {"type": "string"}})},
        }
    )
    return {"name": "qa_records", "strict": True, "schema": obj({"records": {"type": "array", "items": record}})}


# ---- inputs ------------------------------------------------------------------------------
@dataclass
class PanelInput:
    paper_sha: str
    figure_id: str
    panel_id: str
    image_path: str
    image_sha: str
    text: PanelText

    def digest(self) -> str:
        return sha256_json({"image": self.image_sha, "text": asdict(self.text)})


_METHODS = re.compile(r"experiment|method|material|preparation|characteri|procedure|sample", re.I)
_INTRO = re.compile(r"abstract|introduction", re.I)
_ABSTRACT = re.compile(r"abstract|a\s?r\s?t\s?i\s?c\s?l\s?e\s+i\s?n\s?f\s?o|summary", re.I)


def abstract_of(paragraphs: list[dict]) -> str:
    """The paper's abstract: the first long paragraph under an "Abstract" (or Elsevier "article info") heading,
    else the first long paragraph before the introduction; "" when there is none. It names the material the
    paper studies for the offline rules (it is not evidence and not sent to the LLM)."""
    body = sorted((p for p in paragraphs if p["kind"] == "paragraph"), key=lambda p: p["paragraph_index"])
    for p in body:
        if _ABSTRACT.search(p["section"] or "") and len(p["text"]) >= 300:
            return p["text"][:3000]
    for p in body:
        if re.search(r"introduction|experimental|methods|results", p["section"] or "", re.I):
            break
        if len(p["text"]) >= 500 and len(p["text"].split()) >= 70:
            return p["text"][:3000]
    return ""


def load_panels(params: QAParams, layout: DataLayout) -> list[PanelInput]:
    """Every panel to ask about, with the caption and the paper text the question may draw on."""
    need = [layout.figures / "panels.parquet", layout.figures / "figures.parquet", layout.ingest / "paragraphs.parquet"]
    for path in need:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the ingest and figures stages first (dvc repro figures)")
    figures = {f["figure_id"]: f for f in pq.read_table(need[1]).to_pylist()}
    by_paper: dict[str, list[dict]] = {}
    for p in pq.read_table(need[2]).to_pylist():
        by_paper.setdefault(p["paper_sha"], []).append(p)
    titles = {}
    papers_path = layout.ingest / "papers.parquet"
    if papers_path.exists():
        titles = {p["paper_sha"]: p["title"] or "" for p in pq.read_table(papers_path, columns=["paper_sha", "title"]).to_pylist()}
    abstracts = {sha: abstract_of(paras) for sha, paras in by_paper.items()}
    abstracts = defaultdict(str, abstracts)
    out = []
    for panel in pq.read_table(need[0]).to_pylist():
        if params.sem_panels_only and not panel["is_sem"]:
            continue
        fig = figures[panel["figure_id"]]
        paragraphs = by_paper.get(panel["paper_sha"], [])
        chosen: dict[int, str] = {}
        budget = params.max_context_chars - len(fig["caption"])
        # citing paragraphs first, then methods, then the introduction's aim
        ranked = [i for i in fig["context_paragraphs"]]
        ranked += [p["paragraph_index"] for p in paragraphs if p["kind"] == "paragraph" and _METHODS.search(p["section"] or "")]
        ranked += [p["paragraph_index"] for p in paragraphs if p["kind"] == "paragraph" and _INTRO.search(p["section"] or p["text"][:20])]
        text_of = {p["paragraph_index"]: p["text"] for p in paragraphs}
        for i in ranked:
            if i in chosen or i not in text_of or len(text_of[i]) < 40:
                continue
            if len(text_of[i]) > budget:
                continue
            chosen[i] = text_of[i]
            budget -= len(text_of[i])
        out.append(
            PanelInput(
                paper_sha=panel["paper_sha"],
                figure_id=panel["figure_id"],
                panel_id=panel["panel_id"],
                image_path=panel["image_path"],
                image_sha=panel["image_sha"],
                text=PanelText(
                    panel_id=panel["panel_id"],
                    figure_label=fig["label"],
                    panel_label=panel["panel_label"],
                    caption=fig["caption"],
                    paragraphs=dict(sorted(chosen.items())),
                    title=titles.get(panel["paper_sha"], ""),
                    abstract=abstracts[panel["paper_sha"]],
                ),
            )
        )
    return out


# ---- prompts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str
    sha: str

    @property
    def version(self) -> str:
        return f"{self.name}@{self.sha[:12]}"


def load_prompt(name: str) -> Prompt:
    path = PROMPTS_DIR / f"{name}.md"
    if not path.exists():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.md"))
        raise FileNotFoundError(f"prompt {name!r} not found in {PROMPTS_DIR} (have: {known})")
    raw = path.read_text(encoding="utf-8")
    sections = re.split(r"^## (system|user)\s*$", raw, flags=re.M)
    parts = dict(zip(sections[1::2], (s.strip() for s in sections[2::2])))
    if set(parts) != {"system", "user"}:
        raise ValueError(f"{path}: needs a '## system' and a '## user' section")
    return Prompt(name, parts["system"], parts["user"], sha256_bytes(raw.encode()))


def paper_data(panel: PanelInput) -> str:
    """The untrusted paper text as a JSON document that cannot break out of its element."""
    doc = {
        "title": panel.text.title,
        "caption": panel.text.caption,
        "paragraphs": [{"index": i, "text": t} for i, t in panel.text.paragraphs.items()],
    }
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


def render_messages(prompt: Prompt, panel: PanelInput, slots: list[str], attach_image: bool = False) -> list[dict]:
    fills = {
        "slots": "\n".join(f"{n}. {slot}" for n, slot in enumerate(slots, 1)),
        "features": ", ".join(FEATURES),
        "defect_features": ", ".join(sorted(DEFECT_FEATURES)),
        "panel": panel.text.panel_label or "(single panel)",
        "figure": panel.text.figure_label,
        "paper_data": paper_data(panel),
    }
    # one pass, so a paper quoting "{{slots}}" is not expanded
    user = re.sub(r"\{\{(\w+)\}\}", lambda m: fills.get(m.group(1), m.group(0)), prompt.user)
    content: str | list = user
    if attach_image:
        data = base64.b64encode(Path(panel.image_path).read_bytes()).decode()
        content = [{"type": "text", "text": user}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": content}]


# ---- validation ----------------------------------------------------------------------------
@dataclass
class Checked:
    records: list[dict] = field(default_factory=list)  # valid, in reply format, with "slot"
    rejects: list[dict] = field(default_factory=list)  # {"reason", "detail", "raw"}
    reask: str | None = None  # why the whole reply should be asked again


def _norm(text: str) -> str:
    text = text.replace("\u00a0", " ").replace("\u2013", "-").replace("\u2014", "-").replace("\u2212", "-")
    text = re.sub(r"[\u2018\u2019]", "'", re.sub(r"[\u201c\u201d]", '"', text))
    return re.sub(r"\s+", " ", text).strip().lower()


def parse_json_object(content: str) -> dict:
    """The reply's JSON object; tolerates a code fence or prose around it."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        start, end = content.find("{"), content.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("no JSON object in the reply") from None
        try:
            value = json.loads(content[start : end + 1])
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("the reply is JSON but not an object")
    return value


def check_reply(content: str, finish_reason: str, panel: PanelInput, slots: list[str], filled: set[str]) -> Checked:
    """Validate one reply against the schema, the requested slots and the panel's sources."""
    out = Checked()
    raw = content[:2000]
    if finish_reason == "length":
        out.rejects.append({"reason": "truncated", "detail": "reply stopped at max_tokens", "raw": raw})
        out.reask = "your reply was cut off; answer more briefly"
        return out
    try:
        doc = parse_json_object(content)
    except ValueError as e:
        out.rejects.append({"reason": "malformed_json", "detail": str(e), "raw": raw})
        out.reask = f"your reply was not a JSON object ({e})"
        return out
    items = doc.get("records")
    if not isinstance(items, list):
        out.rejects.append({"reason": "schema_invalid", "detail": "no 'records' list", "raw": raw})
        out.reask = "your reply had no 'records' list"
        return out
    raw_sources = panel.text.sources()
    sources = {k: _norm(v) for k, v in raw_sources.items()}
    wanted = Counter(slots)
    wanted.subtract(Counter(filled))
    for item in items:
        record, reason, detail = _check_record(item, sources, wanted, raw_sources)
        if record is None:
            out.rejects.append({"reason": reason, "detail": detail, "raw": json.dumps(item, ensure_ascii=False)[:2000]})
            continue
        slot = f"{record.question_type}@{record.context_level}"
        wanted[slot] -= 1
        out.records.append({**record.model_dump(), "slot": slot})
    missing = [s for s, n in wanted.items() if n > 0]
    if missing:
        problems = Counter(r["reason"] for r in out.rejects)
        out.reask = f"no valid record for slots {missing}" + (f" (rejected: {dict(problems)})" if problems else "")
    return out


def _check_record(item: object, sources: dict[str, str], wanted: Counter, raw_sources: dict[str, str] | None = None) -> tuple[QARecord | None, str, str]:
    """(the record, "", "") when it passes every check, else (None, reason, detail)."""
    try:
        record = QARecord.model_validate(item)
    except ValidationError as e:
        return None, "schema_invalid", "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
    slot = f"{record.question_type}@{record.context_level}"
    if wanted.get(slot, 0) <= 0:
        return None, "unrequested_slot", f"{slot} was not asked for (or already answered)"
    unknown = [f for f in record.features if f not in FEATURES and not re.fullmatch(r"other:[\w \-]{2,40}", f)]
    if unknown:
        return None, "unknown_feature", f"{unknown} not in the vocabulary"
    types = record.defect.types
    if record.defect.present != bool(types) or not set(types) <= DEFECT_FEATURES or not set(types) <= set(record.features):
        return None, "inconsistent_defect", f"present={record.defect.present}, types={types}, features={record.features}"
    for ev in record.evidence:
        text = _norm(ev.text).strip(" .\"'")
        if ev.source not in sources:
            return None, "ungrounded", f"evidence source {ev.source!r} is not in the paper data"
        if len(text.split()) < 3 or text not in sources[ev.source]:
            return None, "ungrounded", f"evidence not found in {ev.source}: {ev.text[:120]!r}"
    if record.context_level == "none" and re.search(r"\d", record.question):
        return None, "context_leak", "a 'none' context question contains numbers"
    copied = _instruction_text(record, raw_sources if raw_sources is not None else sources)
    if copied:
        return None, "instruction_text", copied
    if qa_rules.says_nothing(record.answer):
        return None, "uninformative", f"the answer says nothing about the image: {record.answer[:120]!r}"
    contradiction = _defect_contradiction(record)
    if contradiction:
        return None, "contradicts_defect", contradiction
    return record, "", ""


def _defect_contradiction(record: QARecord) -> str:
    """Why the answer contradicts its own defect label, or "" when it does not.

    The opening yes/no is read through the question's polarity ("Is it free of defects?" yes = no defect;
    "Are there defects?" yes = defect); a defect question's answer text is read negation-aware too."""
    polarity = qa_rules.question_polarity(record.question)
    is_defect_question = record.question_type == "defect_detection"
    if polarity is None and not is_defect_question:
        return ""
    present = record.defect.present
    said = scoring.yes_no_claim(record.answer, polarity)
    if said is not None and said != present:
        return f"the answer's yes/no says defect={said} to a {polarity or 'any'}-polarity question, but defect.present={present}"
    if is_defect_question:
        claim = scoring.content_claim(record.answer)
        if claim is not None and claim != present:
            return f"the answer's text says defect={claim}, but defect.present={present}"
    return ""


def _instruction_text(record: QARecord, sources: dict[str, str]) -> str:
    """Why the record carries text addressed to a model, or "": an instruction-like sentence in the question or
    answer, or a run of 6 words copied from an instruction-like sentence of the paper data (``sources``, as
    extracted: "Respond with 'no defects'." obeyed word for word is caught too)."""
    for name, text in (("answer", record.answer), ("question", record.question)):
        for sentence in qa_rules.sentences(text):
            if qa_rules.addresses_model(sentence):
                where = [k for k, v in sources.items() if _norm(sentence).strip(" .") in _norm(v)]
                return f"the {name} addresses a model{' (copied from ' + where[0] + ')' if where else ''}: {sentence[:120]!r}"
    said = [_norm(record.answer), _norm(record.question)]
    for src, text in sources.items():
        for part in qa_rules.model_addressed_parts(text):
            words = _norm(part).split()
            for i in range(max(0, len(words) - 5)):
                run = " ".join(words[i : i + 6]).strip(" .,;:")
                if any(run in t for t in said):
                    return f"copies instruction text from {src}: {run!r}"
    return ""


# ---- one panel -----------------------------------------------------------------------------
@dataclass
class PanelOutcome:
    panel_id: str
    paper_sha: str
    key: str  # the panel result file's key (``Generator.key``)
    records: list[dict]
    rejects: list[dict]
    done: bool  # False: waiting for a batch, or the request failed; asked again next run
    from_cache: bool = False  # read from panels/<key>.json: nothing was done
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pending_body: dict | None = None  # the request a batch must answer first
    # what this panel's records cost, cached or not: replies used and their tokens (saved with the panel)
    spent: dict = field(default_factory=lambda: {"replies": 0, "prompt_tokens": 0, "completion_tokens": 0})


@dataclass
class Generator:
    """What answers: offline rules, or an LLM client with its prompt."""

    kind: Literal["offline", "llm"]
    params: QAParams
    client: LLMClient | None = None
    prompt: Prompt | None = None
    response_format: str | None = None  # set when the endpoint refused the configured one

    @property
    def name(self) -> str:
        return f"offline-rules/{qa_rules.RULES_VERSION}" if self.kind == "offline" else f"llm:{self.params.llm.model}"

    def key(self, panel: PanelInput) -> str:
        code = {n: sha256_bytes((Path(__file__).parent / n).read_bytes()) for n in _CODE_FILES}
        spec: dict = {"panel": panel.digest(), "generator": self.name, "slots": self.params.slots, "code": code}
        if self.kind == "llm":
            llm = self.params.llm
            spec |= {
                "prompt": self.prompt.sha,
                "llm": llm.model_dump(include={"model", "temperature", "max_tokens", "seed", "response_format", "attach_image", "max_invalid_retries"}),
            }
        return sha256_json(spec)


def make_generator(params: QAParams, layout: DataLayout, kind: str | None = None) -> Generator:
    kind = kind or resolve_generator(params)
    if kind == "offline":
        return Generator("offline", params)
    client = LLMClient(params.llm, layout.qa / "cache", batches_dir=layout.qa / "batches")
    return Generator("llm", params, client=client, prompt=load_prompt(params.prompt))


def resolve_generator(params: QAParams) -> Literal["offline", "llm"]:
    """``qa.generator`` as set in params (a tracked input); ``llm`` without an endpoint is an error here, before any work."""
    if params.generator == "llm" and not llm_configured(params.llm):
        raise LLMError(f"qa.generator is llm but no endpoint is configured: set ${params.llm.api_key_env} "
                       "(and optionally qa.llm.base_url or $OPENAI_BASE_URL), or set qa.generator: offline")
    return params.generator


def panel_path(layout: DataLayout, key: str) -> Path:
    return layout.qa / "panels" / key[:2] / f"{key}.json"


def prune_panel_results(layout: DataLayout, outcomes: list[PanelOutcome]) -> int:
    """Remove per-panel result files no current panel uses. The LLM request cache is never pruned:
    those replies were paid for, and a switch back finds them there."""
    keep = {panel_path(layout, o.key) for o in outcomes if o.key}
    stale = [p for p in (layout.qa / "panels").glob("*/*.json") if p not in keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def answer_panel(panel: PanelInput, gen: Generator, layout: DataLayout, *, cache_only: bool = False) -> PanelOutcome:
    """Records for one panel, from its result file when nothing changed, else generated and validated.

    ``cache_only`` (batch mode): never send a request; return ``done=False`` with the request a
    batch must answer."""
    key = gen.key(panel)
    path = panel_path(layout, key)
    if path.exists():
        saved = read_json(path)
        return PanelOutcome(panel.panel_id, panel.paper_sha, key, saved["records"], saved["rejects"], True, from_cache=True, spent=saved["spent"])
    slots = gen.params.slots
    if gen.kind == "offline":
        checked = check_reply(json.dumps({"records": qa_rules.generate(panel.text, slots)}), "stop", panel, slots, set())
        outcome = PanelOutcome(panel.panel_id, panel.paper_sha, key, _finish(checked.records, panel, gen, ""), checked.rejects, True)
    else:
        outcome = _answer_with_llm(panel, gen, key, cache_only)
    if outcome.done:
        atomic_write_json(
            path,
            {"panel_id": panel.panel_id, "generator": gen.name, "records": outcome.records, "rejects": outcome.rejects, "spent": outcome.spent},
        )
    return outcome


def _answer_with_llm(panel: PanelInput, gen: Generator, key: str, cache_only: bool) -> PanelOutcome:
    client, llm = gen.client, gen.params.llm
    slots = gen.params.slots
    messages = render_messages(gen.prompt, panel, slots, attach_image=llm.attach_image)
    outcome = PanelOutcome(panel.panel_id, panel.paper_sha, key, [], [], False)
    records: list[dict] = []
    for attempt in range(llm.max_invalid_retries + 1):
        formats = _formats(gen)
        body = client.body(messages, reply_json_schema(), formats[0])
        # an answer in a weaker format, from a run that fell back, is as good as a new one
        reply: Reply | None = next(
            (r for f in formats if (r := client.cached(client.body(messages, reply_json_schema(), f))) is not None), None
        )
        while reply is None:
            if cache_only:
                outcome.pending_body = body
                return outcome
            try:
                reply = client.complete(body)
            except LLMError as e:
                weaker = FORMAT_FALLBACK.get(gen.response_format or llm.response_format)
                if e.status in (400, 422) and weaker and "response_format" in body:
                    log.warning("the endpoint refused response_format %s (%s); using %s from now on", body["response_format"]["type"], e, weaker)
                    gen.response_format = weaker
                    body = client.body(messages, reply_json_schema(), weaker)
                    continue
                outcome.rejects.append({"reason": "request_failed", "detail": str(e), "raw": "", "request_key": client.key(body)})
                return outcome  # not done: the next run asks again
        outcome.spent = {
            "replies": outcome.spent["replies"] + 1,
            "prompt_tokens": outcome.spent["prompt_tokens"] + reply.prompt_tokens,
            "completion_tokens": outcome.spent["completion_tokens"] + reply.completion_tokens,
        }
        outcome.cache_hits += reply.cached
        outcome.requests += not reply.cached
        outcome.retries += reply.retries
        outcome.prompt_tokens += 0 if reply.cached else reply.prompt_tokens
        outcome.completion_tokens += 0 if reply.cached else reply.completion_tokens
        filled = {r["slot"] for r in records}
        checked = check_reply(reply.content, reply.finish_reason, panel, slots, filled)
        records += _finish(checked.records, panel, gen, reply.key)
        outcome.rejects += [{**r, "request_key": reply.key} for r in checked.rejects]
        if checked.reask is None or attempt == llm.max_invalid_retries:
            break
        messages = messages + [
            {"role": "assistant", "content": reply.content[:4000]},
            {"role": "user", "content": f"That reply was rejected: {checked.reask}. Reply again with the complete JSON object for all slots, nothing else."},
        ]
    outcome.records, outcome.done = records, True
    return outcome


def _formats(gen: Generator) -> list[str]:
    """The reply format to ask in, then the weaker ones it may have fallen back to before."""
    out = [gen.response_format or gen.params.llm.response_format]
    while out[-1] in FORMAT_FALLBACK:
        out.append(FORMAT_FALLBACK[out[-1]])
    return out


def _finish(records: list[dict], panel: PanelInput, gen: Generator, request_key: str) -> list[dict]:
    out = []
    for r in records:
        qa_id = sha256_json([panel.panel_id, gen.name, r["slot"], r["question"]])[:20]
        out.append(
            {
                "qa_id": qa_id,
                "paper_sha": panel.paper_sha,
                "figure_id": panel.figure_id,
                "panel_id": panel.panel_id,
                "image_path": panel.image_path,
                "image_sha": panel.image_sha,
                "question": r["question"],
                "answer": r["answer"],
                "question_type": r["question_type"],
                "complexity": r["complexity"],
                "context_level": r["context_level"],
                "context_types": list(dict.fromkeys(r["context_types"])),
                "features": r["features"],
                "defect_present": r["defect"]["present"],
                "defect_types": r["defect"]["types"],
                "evidence": r["evidence"],
                "generator": gen.name,
                "prompt_version": gen.prompt.version if gen.prompt else "",
                "request_key": request_key,
                "slot": r["slot"],
            }
        )
    return out


# ---- the stage -----------------------------------------------------------------------------
def split_of(paper_sha: str, eval_fraction: float, salt: str) -> str:
    """train | eval for a paper: a salted hash, so the answer never changes as papers are added."""
    u = int(sha256_bytes(f"{salt}:{paper_sha}".encode())[:13], 16) / 16**13
    return "eval" if u < eval_fraction else "train"


@dataclass
class QAReport:
    # the dataset (saved as report.json: the same after a re-run with nothing new)
    generator: str
    prompt_version: str
    panels: int
    panels_done: int
    panels_pending: int
    records: int
    train_records: int
    eval_records: int
    train_papers: int
    eval_papers: int
    rejected: int
    rejected_by_reason: dict
    record_valid_rate: float
    by_type: dict
    by_context_level: dict
    spent: dict  # replies and tokens behind the dataset, cached or not, and their cost at list price
    # this run only (logged and shown in the Prefect UI, not saved with the data)
    panels_from_cache: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    batches: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    out_dir: str = ""

    RUN_FIELDS = ("panels_from_cache", "requests", "cache_hits", "retries", "prompt_tokens", "completion_tokens", "cost_usd", "batches", "elapsed_s", "out_dir")

    def dataset(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUN_FIELDS}

    def summary(self) -> str:
        label = " (OFFLINE rule-based generator, no LLM)" if self.generator.startswith("offline") else ""
        return (
            f"qa{label}: {self.records} records ({self.train_records} train / {self.eval_records} eval) from "
            f"{self.panels_done} of {self.panels} panels ({self.panels_from_cache} unchanged); {self.rejected} rejected; "
            f"this run: {self.requests} requests, {self.prompt_tokens + self.completion_tokens} tokens, ${self.cost_usd:.4f}"
            + (f"; {self.panels_pending} panels waiting for a batch or a retry" if self.panels_pending else "")
            + f" -> {self.out_dir}"
        )


def answer_panels(
    panels: list[PanelInput],
    gen: Generator,
    layout: DataLayout,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[PanelOutcome], dict]:
    """Answer every panel; LLM requests run ``qa.llm.concurrency`` at a time, or through a batch."""
    batches: dict = {}
    if gen.kind == "llm" and gen.params.llm.batch:
        batches = gen.client.collect_batches(0)  # answers of earlier runs' batches first
        outcomes = [answer_panel(p, gen, layout, cache_only=True) for p in panels]
        bodies = [o.pending_body for o in outcomes if o.pending_body]
        if bodies:
            batch_id = gen.client.submit_batch(bodies)
            batches = gen.client.collect_batches(gen.params.llm.batch_wait_s)
            if batch_id:
                batches.setdefault(batch_id, "submitted")
            outcomes = [o if o.done else answer_panel(p, gen, layout, cache_only=True) for p, o in zip(panels, outcomes)]
        if progress:
            progress("qa", len(panels), len(panels))
        return outcomes, batches
    workers = gen.params.llm.concurrency if gen.kind == "llm" else 1
    outcomes: list[PanelOutcome] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, outcome in enumerate(pool.map(lambda p: answer_panel(p, gen, layout), panels), 1):
            outcomes.append(outcome)
            if progress:
                progress("qa", n, len(panels))
    return outcomes, batches


def finish_qa(
    params: QAParams,
    layout: DataLayout,
    gen_name: str,
    prompt_version: str,
    outcomes: list[PanelOutcome],
    *,
    batches: dict | None = None,
    account: dict | None = None,
    started: float | None = None,
) -> QAReport:
    """Split, write the tables, the report and the examples page.

    ``account``: the LLM client's account when one client served every panel (it also counts Batch
    API answers); without it, requests and tokens are summed over the panels."""
    rows = {"train": [], "eval": []}
    rejected = []
    for o in outcomes:
        split = split_of(o.paper_sha, params.eval_fraction, params.split_salt)
        for r in o.records:
            rows[split].append({k: v for k, v in r.items() if k != "slot"} | {"split": split})
        for rej in o.rejects:
            rejected.append(
                {"paper_sha": o.paper_sha, "panel_id": o.panel_id, "generator": gen_name, "reason": rej["reason"],
                 "detail": rej["detail"], "request_key": rej.get("request_key", ""), "raw": rej.get("raw", "")}
            )
    out = layout.qa
    prune_panel_results(layout, outcomes)
    for split in ("train", "eval"):
        write_table(table_from_rows(rows[split], QA_SCHEMA, f"{split}.parquet"), out / f"{split}.parquet", QA_SCHEMA)
    write_table(table_from_rows(rejected, QA_REJECTED_SCHEMA, "rejected.parquet"), out / "rejected.parquet", QA_REJECTED_SCHEMA)
    all_rows = rows["train"] + rows["eval"]
    record_rejects = [r for r in rejected if r["reason"] not in ("request_failed", "truncated", "malformed_json")]
    spent = {k: sum(o.spent[k] for o in outcomes) for k in ("replies", "prompt_tokens", "completion_tokens")}
    spent["cost_usd_at_list_price"] = (
        round(cost_usd(params.llm, spent["prompt_tokens"], spent["completion_tokens"]), 6) if gen_name.startswith("llm:") else 0.0
    )
    report = QAReport(
        generator=gen_name,
        prompt_version=prompt_version,
        panels=len(outcomes),
        panels_done=sum(o.done for o in outcomes),
        panels_pending=sum(not o.done for o in outcomes),
        records=len(all_rows),
        train_records=len(rows["train"]),
        eval_records=len(rows["eval"]),
        train_papers=len({r["paper_sha"] for r in rows["train"]}),
        eval_papers=len({r["paper_sha"] for r in rows["eval"]}),
        rejected=len(rejected),
        rejected_by_reason=dict(sorted(Counter(r["reason"] for r in rejected).items())),
        record_valid_rate=round(len(all_rows) / max(1, len(all_rows) + len(record_rejects)), 4),
        by_type=dict(sorted(Counter(r["question_type"] for r in all_rows).items())),
        by_context_level=dict(sorted(Counter(r["context_level"] for r in all_rows).items())),
        spent=spent,
        panels_from_cache=sum(o.from_cache for o in outcomes),
        requests=sum(o.requests for o in outcomes),
        cache_hits=sum(o.cache_hits for o in outcomes),
        retries=sum(o.retries for o in outcomes),
        prompt_tokens=sum(o.prompt_tokens for o in outcomes),
        completion_tokens=sum(o.completion_tokens for o in outcomes),
        batches=batches or {},
        elapsed_s=round(time.monotonic() - started, 2) if started else 0.0,
        out_dir=str(out),
    )
    if account is not None:
        report.requests = account["requests"] + account["batch_requests"]
        report.retries = account["retries"]
        report.prompt_tokens, report.completion_tokens = account["prompt_tokens"], account["completion_tokens"]
        report.cost_usd = account["cost_usd"]
    elif gen_name.startswith("llm:"):
        report.cost_usd = round(cost_usd(params.llm, report.prompt_tokens, report.completion_tokens), 6)
    atomic_write_json(out / "report.json", report.dataset())
    write_qa_page(layout, all_rows, report)
    return report


def run_qa(
    params: QAParams,
    layout: DataLayout,
    *,
    generator: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> QAReport:
    """The whole stage in one process."""
    started = time.monotonic()
    panels = load_panels(params, layout)
    gen = make_generator(params, layout, generator)
    log.info("qa: %d panels, generator %s", len(panels), gen.name)
    outcomes, batches = answer_panels(panels, gen, layout, progress=progress)
    account = gen.client.account.as_dict() if gen.client is not None else None
    report = finish_qa(
        params, layout, gen.name, gen.prompt.version if gen.prompt else "", outcomes,
        batches=batches, account=account, started=started,
    )
    log.info(report.summary())
    return report


# ---- the page ------------------------------------------------------------------------------
def write_qa_page(layout: DataLayout, rows: list[dict], report: QAReport, max_panels: int = 60) -> Path:
    """QA examples beside their panel images, and counts by question type and context level."""
    out = layout.qa / "index.html"
    esc = html.escape
    levels = ["none", "low", "moderate", "high"]
    types = ["description", "feature_identification", "defect_detection", "complex_reasoning"]
    grid = Counter((r["question_type"], r["context_level"]) for r in rows)
    offline = report.generator.startswith("offline")
    parts = [
        "<!doctype html><meta charset='utf-8'><title>GlassLLaVA QA</title>",
        "<style>body{font:14px sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}.panel{display:flex;gap:1em;border-top:1px solid #ccc;padding:1em 0}"
        ".panel img{max-width:300px;max-height:300px}.q{font-weight:bold}.meta{color:#666;font-size:12px}"
        ".warn{background:#fff3cd;padding:.5em}</style>",
        f"<h1>QA records: {report.records} ({report.train_records} train, {report.eval_records} eval)</h1>",
    ]
    if offline:
        parts.append("<p class=warn>Generated by the OFFLINE rule-based generator (no LLM): a baseline built from captions and the paper's own sentences.</p>")
    spent = report.spent
    parts.append(
        f"<p class=meta>generator {esc(report.generator)} {esc(report.prompt_version)} &middot; {report.rejected} rejected &middot; "
        f"{spent['replies']} LLM replies, {spent['prompt_tokens'] + spent['completion_tokens']} tokens, ${spent['cost_usd_at_list_price']:.4f} at list price</p>"
    )
    parts.append("<table><tr><th>type \\ context</th>" + "".join(f"<th>{lv}</th>" for lv in levels) + "</tr>")
    for t in types:
        parts.append(f"<tr><th>{t}</th>" + "".join(f"<td>{grid[(t, lv)]}</td>" for lv in levels) + "</tr>")
    parts.append("</table>")
    by_panel: dict[str, list[dict]] = {}
    for r in rows:
        by_panel.setdefault(r["panel_id"], []).append(r)
    shown = list(by_panel.items())[:max_panels]
    if len(shown) < len(by_panel):
        n_shown = sum(len(recs) for _, recs in shown)
        parts.append(
            f"<p class=warn>Showing the first {len(shown)} of {len(by_panel)} panels ({n_shown} of {len(rows)} records); "
            f"every record is in <code>qa/train.parquet</code> and <code>qa/eval.parquet</code>.</p>"
        )
    else:
        parts.append(f"<p class=meta>All {len(by_panel)} panels with records are shown.</p>")
    for panel_id, recs in shown:
        img = esc(os.path.relpath(recs[0]["image_path"], out.parent))
        parts.append(f"<div class=panel><img src='{img}' alt='{esc(panel_id)}'><div>")
        parts.append(f"<div class=meta>{esc(panel_id)} &middot; {recs[0]['split']} &middot; features: {esc(', '.join(recs[0]['features']))}</div>")
        for r in recs:
            parts.append(
                f"<p><span class=meta>[{esc(r['question_type'])} / {esc(r['context_level'])}]</span> "
                f"<span class=q>{esc(r['question'])}</span><br>{esc(r['answer'])}</p>"
            )
        parts.append("</div></div>")
    atomic_write_text(out, "\n".join(parts) + "\n")
    return out
