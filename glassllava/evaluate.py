"""Stage ``evaluate``: every row answers the same held-out questions about the same images, then is scored.

Inputs: ``dataset/eval-*.parquet`` (one question per conversation, images by hash), ``qa/{train,eval}.parquet``
(the records behind them: gold features, defect label, context types), the trained model in ``model/``.

Rows, side by side on one evaluation set (``evaluate.rows``):

- ``model``: the trained model, greedy, batched (``generate.answer_questions``: left padding, KV cache);
- ``blind``: the same model with every image replaced by a grey one: what it answers without the pixels;
- ``base``: the preset's model before fine-tuning (pretrained parts, untrained projector): what training added;
- ``majority``: the majority defect label of the TRAIN records, as an answer, on the defect questions only;
- ``vision:<model>``: an OpenAI-compatible vision model shown the panel, where a key or base URL is set.

Answers are cached per row in ``evaluate/answers/<row>.<key>.parquet``, the key hashing what the answers depend
on (the model's weights, the evaluation set, the generation knobs): a re-run with nothing new generates
nothing. The judge (``glassllava.judge``), the metrics with intervals over images (``glassllava.eval_metrics``),
the report (``glassllava.eval_report``) and champion promotion (``glassllava.promotion``) follow.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from glassllava.files import sha256_file, sha256_json
from glassllava.llm import LLMError, llm_configured
from glassllava.params import DataLayout, EvaluateParams, ModelParams
from glassllava.schemas import EVAL_ANSWERS_SCHEMA, QA_SCHEMA, read_table, table_from_rows, write_table

log = logging.getLogger(__name__)

ANSWERS_VERSION = "1"
Progress = Callable[[str, int, int], None]

# the answer a row that cannot answer a question gives (the majority row off the defect questions)
NOT_ASKED = ""


class EvaluateInputError(FileNotFoundError):
    """A stage before evaluate has not run, or left nothing to evaluate."""


# ---- the evaluation set -------------------------------------------------------------------------------
def eval_questions(layout: DataLayout, max_questions: int | None = None) -> list[dict]:
    """The held-out questions, one per eval conversation, with what the scores need from their QA records
    (gold features, defect label and types, context types, complexity) and the image path."""
    from glassllava.train import read_conversations

    qa_path = layout.qa / "eval.parquet"
    if not qa_path.exists() or not list(layout.dataset.glob("eval-*.parquet")):
        raise EvaluateInputError(f"no evaluation set under {layout.dataset} and {layout.qa}: run the qa and dataset stages first (dvc repro dataset)")
    records = {r["qa_id"]: r for r in read_table(qa_path, QA_SCHEMA).to_pylist()}
    out = []
    for conv in sorted(read_conversations(layout, "eval"), key=lambda c: c["conversation_id"]):
        turn = conv["turns"][0]
        rec = records.get(turn["qa_id"])
        if rec is None:
            continue  # a conversation whose record left the QA tables: the dataset stage is stale
        out.append(
            {
                "qa_id": rec["qa_id"],
                "paper_sha": rec["paper_sha"],
                "panel_id": rec["panel_id"],
                "image_sha": conv["image_sha"],
                "image_path": conv["image_path"],
                "question": turn["question"],
                "reference": turn["answer"],
                "question_type": rec["question_type"],
                "complexity": rec["complexity"],
                "context_level": rec["context_level"],
                "context_types": list(rec["context_types"]),
                "features": list(rec["features"]),
                "defect_present": bool(rec["defect_present"]),
                "defect_types": list(rec["defect_types"]),
            }
        )
    if not out:
        raise EvaluateInputError(f"the evaluation set in {layout.dataset} is empty: the eval papers have no SEM panels with QA records")
    return out[:max_questions] if max_questions else out


def eval_set_sha(questions: list[dict]) -> str:
    """What the evaluation set is: its questions, references, gold labels and images. Two models' numbers are
    comparable only on the same set (promotion re-evaluates the champion when this changes)."""
    keys = ("qa_id", "image_sha", "question", "reference", "features", "defect_present", "context_level")
    return sha256_json([[q[k] for k in keys] for q in questions])


def majority_label(layout: DataLayout) -> bool | None:
    """The most common defect label among the TRAIN records' defect questions (never the eval ones)."""
    path = layout.qa / "train.parquet"
    if not path.exists():
        return None
    labels = [r["defect_present"] for r in read_table(path, QA_SCHEMA).to_pylist() if r["question_type"] == "defect_detection"]
    return (2 * sum(labels) >= len(labels)) if labels else None


def majority_answer(question: str, defect: bool) -> str:
    """The majority label said as an answer, in the question's own polarity ("Is it free of defects?" -> "No." when
    the majority has defects)."""
    from glassllava.qa_rules import question_polarity

    if question_polarity(question) == "free":
        return "Yes. The sample is free of defects." if not defect else "No. The sample shows defects."
    return "Yes. The sample shows defects." if defect else "No. The sample is free of defects."


# ---- answers, row by row --------------------------------------------------------------------------------
@dataclass
class RowAnswers:
    row: str
    answers: list[dict]  # EVAL_ANSWERS_SCHEMA rows, in question order
    from_cache: bool
    seconds: float


def _answer_rows(row: str, questions: list[dict], texts: list[str], tokens: list[int], seconds: list[float]) -> list[dict]:
    return [
        {**{k: q[k] for k in EVAL_ANSWERS_SCHEMA.names if k in q}, "row": row, "answer": t, "new_tokens": n, "seconds": s}
        for q, t, n, s in zip(questions, texts, tokens, seconds)
    ]


def answers_path(layout: DataLayout, row: str, key: str) -> Path:
    return layout.root / "evaluate" / "answers" / f"{row.replace(':', '_').replace('/', '_')}.{key}.parquet"


def _cached(layout: DataLayout, row: str, key: str) -> list[dict] | None:
    path = answers_path(layout, row, key)
    return read_table(path, EVAL_ANSWERS_SCHEMA).to_pylist() if path.exists() else None


def _store(layout: DataLayout, row: str, key: str, answers: list[dict]) -> list[dict]:
    """Write a row's answers and return them as stored (control characters a model emitted are stripped, as in
    every table), so a first run and a cached re-run score the same text."""
    path = answers_path(layout, row, key)
    write_table(table_from_rows(answers, EVAL_ANSWERS_SCHEMA, f"{row} answers"), path, EVAL_ANSWERS_SCHEMA)
    for stale in path.parent.glob(f"{path.name.split('.')[0]}.*.parquet"):
        if stale != path:
            stale.unlink(missing_ok=True)  # one cache file per row: the answers of older models go
    return read_table(path, EVAL_ANSWERS_SCHEMA).to_pylist()


def model_fingerprint(model_dir: Path) -> str:
    """The trained model's identity: its config and weights' bytes."""
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors") and p.name != "glassllava.json")
    if not files:
        raise EvaluateInputError(f"no model in {model_dir}: run the train stage first (dvc repro train)")
    return sha256_json({p.name: sha256_file(p) for p in files})


def generate_answers(model, processor, questions: list[dict], params: EvaluateParams, *, blank_image: bool, progress=None) -> tuple[list[str], list[int], list[float]]:
    from glassllava.generate import answer_questions

    items = [{"image": q["image_path"], "question": q["question"]} for q in questions]
    done = answer_questions(model, processor, items, max_new_tokens=params.max_new_tokens, batch_size=params.batch_size,
                            blank_image=blank_image, progress=progress)
    return [a.text for a in done], [a.new_tokens for a in done], [a.seconds for a in done]


def answer_trained(layout: DataLayout, questions: list[dict], params: EvaluateParams, rows: list[str], set_sha: str,
                   progress: Progress | None = None) -> list[RowAnswers]:
    """The ``model`` and ``blind`` rows: the trained model once loaded, with the panels and with grey images."""
    wanted = [r for r in ("model", "blind") if r in rows]
    if not wanted:
        return []
    fingerprint = model_fingerprint(layout.model)
    keys = {r: sha256_json({"v": ANSWERS_VERSION, "row": r, "model": fingerprint, "set": set_sha,
                            "max_new_tokens": params.max_new_tokens})[:16] for r in wanted}
    out, todo = [], []
    for r in wanted:
        hit = _cached(layout, r, keys[r])
        (out.append(RowAnswers(r, hit, True, 0.0)) if hit is not None else todo.append(r))
    if todo:
        from glassllava.generate import load

        model, processor = load(layout.model)
        for r in todo:
            t0 = time.perf_counter()
            texts, tokens, secs = generate_answers(model, processor, questions, params, blank_image=(r == "blind"),
                                                   progress=progress and (lambda d, n, r=r: progress(f"answering ({r})", d, n)))
            answers = _store(layout, r, keys[r], _answer_rows(r, questions, texts, tokens, secs))
            out.append(RowAnswers(r, answers, False, time.perf_counter() - t0))
    return sorted(out, key=lambda a: wanted.index(a.row))


def answer_base(layout: DataLayout, questions: list[dict], params: EvaluateParams, model_params: ModelParams, set_sha: str,
                progress: Progress | None = None) -> RowAnswers:
    """The ``base`` row: the preset built as training starts it (pretrained parts, the projector at its seeded
    initial weights), never trained."""
    import glassllava.model as model_code
    from glassllava.model import build_model, inference_dtype

    key = sha256_json({"v": ANSWERS_VERSION, "row": "base", "model": model_params.model_dump(), "code": sha256_file(model_code.__file__),
                       "set": set_sha, "max_new_tokens": params.max_new_tokens})[:16]
    hit = _cached(layout, "base", key)
    if hit is not None:
        return RowAnswers("base", hit, True, 0.0)
    import torch

    t0 = time.perf_counter()
    built = build_model(model_params)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = built.model.to(device=device, dtype=inference_dtype(device)).eval()
    tok = built.tokenizer  # stop where a trained model would: at the chat template's end of answer
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(built.preset.chat.answer_end)]
    model.generation_config.pad_token_id = tok.pad_token_id
    texts, tokens, secs = generate_answers(model, built.processor, questions, params, blank_image=False,
                                           progress=progress and (lambda d, n: progress("answering (base)", d, n)))
    answers = _store(layout, "base", key, _answer_rows("base", questions, texts, tokens, secs))
    return RowAnswers("base", answers, False, time.perf_counter() - t0)


def answer_majority(layout: DataLayout, questions: list[dict]) -> RowAnswers | None:
    """The ``majority`` row: the train set's majority defect label on every defect question; nothing elsewhere."""
    label = majority_label(layout)
    if label is None:
        return None
    texts = [majority_answer(q["question"], label) if q["question_type"] == "defect_detection" else NOT_ASKED for q in questions]
    return RowAnswers("majority", _answer_rows("majority", questions, texts, [0] * len(texts), [0.0] * len(texts)), False, 0.0)


VISION_SYSTEM = (
    "You are an expert in scanning electron microscopy of materials. Answer the user's question about the SEM image "
    "in two or three sentences: what is visible, and whether defects (cracks, pores, bubbles, inclusions, "
    "crystals in a glass, scratches) are present. Answer yes or no first when the question asks yes or no."
)


def answer_vision(layout: DataLayout, questions: list[dict], params: EvaluateParams, set_sha: str, progress: Progress | None = None) -> RowAnswers:
    """The ``vision:<model>`` row: an OpenAI-compatible vision model shown each panel, through the project's client
    and cache (a re-run asks nothing it has)."""
    from concurrent.futures import ThreadPoolExecutor

    from glassllava.llm import LLMClient

    llm = params.llm.model_copy(update={"model": params.vision_model, "temperature": 0.0})
    client = LLMClient(llm, layout.root / "evaluate" / "cache")
    row = f"vision:{params.vision_model}"

    def one(q: dict) -> tuple[str, int, float]:
        data = base64.b64encode(Path(q["image_path"]).read_bytes()).decode()
        content = [{"type": "text", "text": q["question"]}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]
        body = client.body([{"role": "system", "content": VISION_SYSTEM}, {"role": "user", "content": content}], response_format="text")
        t0 = time.perf_counter()
        try:
            reply = client.complete(body)
        except Exception as e:  # noqa: BLE001 - one failed question is an empty answer, reported, not a lost run
            log.warning("vision baseline: %s", client.redact(str(e)))
            return NOT_ASKED, 0, 0.0
        return reply.content.strip(), int(reply.completion_tokens or 0), time.perf_counter() - t0

    t0 = time.perf_counter()
    results: list[tuple[str, int, float]] = []
    with ThreadPoolExecutor(max_workers=llm.concurrency) as pool:
        for i, r in enumerate(pool.map(one, questions), 1):
            results.append(r)
            if progress:
                progress(f"answering ({row})", i, len(questions))
    answers = _answer_rows(row, questions, [r[0] for r in results], [r[1] for r in results], [r[2] for r in results])
    return RowAnswers(row, answers, client.account.requests == 0, time.perf_counter() - t0)


# ---- the stage ------------------------------------------------------------------------------------------
@dataclass
class EvaluateReport:
    questions: int
    images: int
    rows: list[str]
    rows_from_cache: list[str]
    judge: str  # offline | llm
    judgments: int
    judge_failures: int
    judge_account: dict
    eval_set_sha: str
    headline: dict
    report_html: Path
    report_md: Path
    metrics_json: Path
    levels_csv: Path
    mlflow_run_id: str | None
    seconds: float


def reports_dir(layout: DataLayout) -> Path:
    """``reports/`` beside the data root (the repository's, for ``data/``): DVC metrics, plots and the report."""
    return layout.root.resolve().parent / "reports"


def answer_all(params, layout: DataLayout, questions: list[dict], set_sha: str, progress: Progress | None = None) -> list[RowAnswers]:
    """Every configured row's answers to the evaluation set (each from its cache when nothing changed)."""
    p: EvaluateParams = params.evaluate
    out = answer_trained(layout, questions, p, p.rows, set_sha, progress)
    if "base" in p.rows:
        out.append(answer_base(layout, questions, p, params.model, set_sha, progress))
    if "majority" in p.rows and (majority := answer_majority(layout, questions)) is not None:
        out.append(majority)
    if "vision" in p.rows:
        out.append(answer_vision(layout, questions, p, set_sha, progress))
    return out


def _judged(rows: list[RowAnswers]) -> list[dict]:
    """The answers to score: every row's, but the majority row only where it answers (the defect questions)."""
    return [a for r in rows for a in r.answers if not (r.row == "majority" and a["answer"] == NOT_ASKED)]


def run_evaluate(params, layout: DataLayout, progress: Progress | None = None, *, out_dir: Path | None = None) -> EvaluateReport:
    """Answer, judge, summarise with intervals over images, report; log everything to the model's MLflow run."""
    from glassllava.eval_metrics import headline, level_table, summarise, table_csv
    from glassllava.eval_report import write_report
    from glassllava.files import atomic_write_json, atomic_write_text
    from glassllava.judge import LLMJudge, judge_answers, judge_variance, resolve_mode
    from glassllava.schemas import EVAL_JUDGMENTS_SCHEMA

    t0 = time.perf_counter()
    p: EvaluateParams = params.evaluate
    try:  # the endpoints the params ask for, before any work
        mode = resolve_mode(p)
    except LLMError as e:
        raise EvaluateInputError(str(e)) from None
    if "vision" in p.rows and not llm_configured(p.llm):
        raise EvaluateInputError(f"evaluate.rows has vision but no endpoint is configured: set ${p.llm.api_key_env} "
                                 "(and optionally evaluate.llm.base_url or $OPENAI_BASE_URL), or drop vision from evaluate.rows")
    questions = eval_questions(layout, p.max_questions)
    set_sha = eval_set_sha(questions)
    rows = answer_all(params, layout, questions, set_sha, progress)
    answers = _judged(rows)
    cache = layout.root / "evaluate" / "cache"
    judgments, account = judge_answers(answers, p, cache, mode, progress=progress)
    variance = None
    if mode == "llm" and p.variance_subset:
        model_answers = [a for a in answers if a["row"] == "model"]
        variance = judge_variance(model_answers, ("quality", "relative"), p.variance_repeats, p.variance_subset, p.seed,
                                  judge=LLMJudge(p, cache), progress=progress)
    work = layout.root / "evaluate"
    write_table(table_from_rows(answers, EVAL_ANSWERS_SCHEMA, "answers"), work / "answers.parquet", EVAL_ANSWERS_SCHEMA)
    write_table(table_from_rows(judgments, EVAL_JUDGMENTS_SCHEMA, "judgments"), work / "judgments.parquet", EVAL_JUDGMENTS_SCHEMA)
    summary = summarise(answers, judgments, bootstrap=p.bootstrap, seed=p.seed)
    head = {**headline(summary), "eval_questions": len(questions)}
    out = Path(out_dir) if out_dir is not None else reports_dir(layout)
    metrics_json = atomic_write_json(out / "eval.json", head)
    levels_csv = atomic_write_text(out / "eval_levels.csv", table_csv(level_table(summary)))
    atomic_write_json(work / "report.json", {"eval_set_sha": set_sha, "judge": mode, "account": account, "variance": variance,
                                             "rows": [r.row for r in rows], "questions": len(questions)})
    images = {q["image_sha"]: q["image_path"] for q in questions}
    html, md = write_report(summary, answers, judgments, out, examples=p.examples, images=images)
    run_id = log_to_mlflow(params, layout, head, [html, md, metrics_json, levels_csv], set_sha, mode)
    failures = sum(not j["ok"] for j in judgments)
    return EvaluateReport(
        questions=len(questions), images=len(images), rows=[r.row for r in rows], rows_from_cache=[r.row for r in rows if r.from_cache],
        judge=mode, judgments=len(judgments), judge_failures=failures, judge_account=account, eval_set_sha=set_sha, headline=head,
        report_html=html, report_md=md, metrics_json=metrics_json, levels_csv=levels_csv, mlflow_run_id=run_id,
        seconds=round(time.perf_counter() - t0, 1),
    )


def log_to_mlflow(params, layout: DataLayout, head: dict, files: list[Path], set_sha: str, mode: str) -> str | None:
    """The headline numbers, the evaluation set's identity and the report, on the trained model's MLflow run (the
    one ``train/report.json`` names); nothing when there is none."""
    from glassllava import tracking
    from glassllava.files import read_json

    train_report = layout.train / "report.json"
    run_id = read_json(train_report).get("mlflow_run_id") if train_report.exists() else None
    if not run_id:
        log.info("evaluate: the training report names no MLflow run; nothing logged")
        return None
    client = tracking._client()
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a store that no longer has the run (another machine's, a fresh sqlite)
        log.warning("evaluate: MLflow run %s is not in %s; nothing logged", run_id, tracking.tracking_uri())
        return None
    numbers = {f"eval.{k}"[:250]: float(v) for k, v in head.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, 0) for k, v in sorted(numbers.items())]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    client.set_tag(run_id, "eval_set_sha", set_sha)
    client.set_tag(run_id, "eval_judge", mode)
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path="evaluation")
    return run_id


def promote_candidate(params, layout: DataLayout, *, report_path: Path | None = None, progress: Progress | None = None) -> dict:
    """The registry's candidate against its champion on the same evaluation set (``glassllava.promotion``): the
    champion is evaluated again (its ``model`` row) when its numbers come from another set."""
    from glassllava import tracking
    from glassllava.eval_metrics import headline, summarise
    from glassllava.files import read_json
    from glassllava.judge import judge_answers, resolve_mode
    from glassllava.promotion import promote_if_better

    tp, p = params.tracking, params.evaluate
    candidate = tracking.get_alias_version(tp.registered_model, tp.candidate_alias)
    if candidate is None:
        raise LookupError(f"no {tp.registered_model}@{tp.candidate_alias} in the MLflow registry: run the train stage first")
    out = reports_dir(layout)
    head_path = out / "eval.json"
    state = layout.root / "evaluate" / "report.json"
    if not head_path.exists() or not state.exists():
        raise FileNotFoundError(f"{head_path} not found: run the evaluate stage first (dvc repro evaluate)")
    head, set_sha = read_json(head_path), read_json(state)["eval_set_sha"]
    questions = eval_questions(layout, p.max_questions)

    def reevaluate(mv) -> dict:
        """The champion's ``model`` row on today's evaluation set, judged as the candidate was."""
        local = tracking.download_model(tp.registered_model, p.promotion.champion_alias)
        from glassllava.generate import load

        model, processor = load(local)
        texts, tokens, secs = generate_answers(model, processor, questions, p, blank_image=False,
                                               progress=progress and (lambda d, n: progress("answering (champion)", d, n)))
        answers = _answer_rows("model", questions, texts, tokens, secs)
        judgments, _ = judge_answers(answers, p, layout.root / "evaluate" / "cache", resolve_mode(p))
        return headline(summarise(answers, judgments, bootstrap=p.bootstrap, seed=p.seed))

    return promote_if_better(None, tp.registered_model, candidate.version, head, p.promotion, eval_set_sha=set_sha,
                             report_path=report_path or out / "promotion.json", reevaluate=reevaluate,
                             candidate_eval_run_id=candidate.run_id)
