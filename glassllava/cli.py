"""The ``glassllava`` command: one subcommand per pipeline stage, plus benchmarks.

Each command parses options, loads ``params.yaml`` and calls one library function; domain
errors become a one-line message and exit code 1, not a traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    help="GlassLLaVA: turn glass-materials papers into a model that reads SEM micrographs.\n\n"
    "Stages run in order: corpus -> ingest -> figures -> qa -> dataset -> train. `dvc repro` runs them all.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks; each writes its results as JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read (missing file: embedded default).")]
DataOpt = Annotated[Path, typer.Option("--data", help="Data root holding every stage's files.")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    if not verbose:  # one line per HTTP request drowns the progress bar
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(1)


def _write_result(result: dict, out: Optional[Path]) -> None:
    text = json.dumps(result, indent=1, sort_keys=True)
    if out is not None:
        from glassllava.files import atomic_write_text

        atomic_write_text(out, text + "\n")
        console.print(f"wrote {out}")
    typer.echo(text)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder for pdfs/, truth/ and manifest.json.")] = Path("data/corpus"),
    papers: Annotated[int, typer.Option("--papers", min=1, help="How many papers.")] = 12,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
) -> None:
    """Generate a synthetic corpus of glass papers with SEM micrographs and full ground truth.

    Example: glassllava synth --papers 12 --seed 0 --out data/corpus
    """
    from glassllava.synth import generate_corpus

    manifest = generate_corpus(out, papers=papers, seed=seed)
    console.print(f"corpus written: {manifest}")


class _Progress:
    """A rich progress bar per stage description, driven by ``progress(description, done, total)``."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, description: str, done: int, total: int) -> None:
        if description not in self.tasks:
            self.tasks[description] = self.bar.add_task(description, total=total)
        self.bar.update(self.tasks[description], completed=done, total=total)


def _load(params_path: Path):
    """The params, or one line per problem on stderr and exit status 2 (``glassllava.params.ParamsError``)."""
    from glassllava.params import EXIT_PARAMS_ERROR, ParamsError, load_params

    try:
        return load_params(params_path)
    except ParamsError as e:
        for line in e.lines:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_PARAMS_ERROR) from None


@app.command()
def corpus(params: ParamsOpt = Path("params.yaml"), data: DataOpt = Path("data")) -> None:
    """Write the generated corpus when params.yaml's corpus.sources includes "generated".

    Example: glassllava corpus --params params.yaml
    """
    from glassllava.params import DataLayout
    from glassllava.synth import generate_corpus

    p = _load(params)
    layout = DataLayout(data)
    if "generated" not in p.corpus.sources:
        console.print("corpus.sources does not include 'generated': nothing to generate")
        layout.corpus.mkdir(parents=True, exist_ok=True)
        return
    manifest = generate_corpus(layout.corpus, papers=p.corpus.generated.papers, seed=p.corpus.generated.seed)
    console.print(f"generated corpus: {manifest}")


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data"),
    retry_downloads: Annotated[bool, typer.Option("--retry-downloads", help="Try every failed URL now (else: after ingest.download_retry_hours).")] = False,
) -> None:
    """Stage ingest: collect PDFs (generated corpus, inbox, URL list), store them by sha256,
    quarantine bad files with their reason, extract paragraphs, headings and figure citations.

    Example: glassllava ingest --params params.yaml
    """
    from glassllava.ingest import run_ingest
    from glassllava.params import DataLayout

    p = _load(params)
    with _Progress() as progress:
        report = run_ingest(p.corpus, p.ingest, DataLayout(data), progress=progress, retry_failed_downloads=retry_downloads)
    console.print(
        f"ingest: {report.new} new, {report.known} known, {report.duplicates} duplicates, "
        f"{report.quarantined} quarantined -> {DataLayout(data).ingest}"
    )


@app.command()
def figures(params: ParamsOpt = Path("params.yaml"), data: DataOpt = Path("data")) -> None:
    """Stage figures: pair every caption with its figure, split panels, render PNG crops,
    mark SEM micrographs, attach the paragraphs that cite each figure.

    Example: glassllava figures --params params.yaml
    """
    from glassllava.figures import run_figures
    from glassllava.layout import LayoutBackendUnavailable
    from glassllava.params import DataLayout
    from glassllava.sem import SemModelError
    from glassllava.vision import VisionModelError

    p = _load(params)
    try:
        with _Progress() as progress:
            report = run_figures(p.figures, DataLayout(data), progress=progress)
    except (FileNotFoundError, SemModelError, VisionModelError, LayoutBackendUnavailable) as e:
        _fail(str(e))
    console.print(
        f"figures: {report.figures} figures ({report.figures_with_region} with a region), {report.panels} panels, "
        f"{report.sem_panels} SEM panels; {report.papers_processed} of {report.papers} papers processed -> {report.figures_table.parent}"
    )


@app.command()
def qa(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data"),
    generator: Annotated[
        Optional[str], typer.Option("--generator", help="offline | llm (default: params qa.generator; auto = llm when a key or base URL is set).")
    ] = None,
) -> None:
    """Stage qa: question-answer records for every SEM panel (description, features, defects,
    reasoning at four context levels), split train/eval by paper. With OPENAI_API_KEY (or a base
    URL) set it asks the LLM, every reply cached; otherwise the offline rule-based generator.

    Example: OPENAI_API_KEY=... glassllava qa --params params.yaml
    """
    from glassllava.llm import LLMError
    from glassllava.params import DataLayout
    from glassllava.qa import run_qa

    p = _load(params)
    if generator not in (None, "offline", "llm"):
        _fail(f"--generator must be offline or llm, not {generator!r}")
    try:
        with _Progress() as progress:
            report = run_qa(p.qa, DataLayout(data), generator=generator, progress=progress)
    except (FileNotFoundError, LLMError) as e:
        _fail(str(e))
    console.print(report.summary())


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data"),
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not register the model in MLflow.")] = False,
) -> None:
    """Stage train: the training recipe under torchrun (processes per node from PET_NPROC_PER_NODE, default 1).
    Writes data/model (Hugging Face layout), data/train/report.json, logs to MLflow and registers the
    model as a version of `glassllava` with the alias `candidate`.

    Example: PET_NPROC_PER_NODE=gpu glassllava train --params params.yaml
    """
    from glassllava.train import TrainingError, launch

    _load(params)  # a params problem is reported here, before torchrun starts
    try:
        report = launch(params, data, on_line=typer.echo, extra=["--no-register"] if no_register else None)
    except TrainingError as e:
        _fail(str(e))
    console.print(f"model: {report['model_dir']}  MLflow run {report['mlflow_run_id']} (version {report['model_version']})")


def _print_headline(head: dict, html: Path) -> None:
    """The numbers people look at first, with their 95 % intervals over images."""
    proxy = " (offline proxy)" if head.get("defect_accuracy_is_proxy") else " (LLM judge)"
    lines = [f"report: {html}"]
    for key, label in (("defect_accuracy", "defect accuracy" + proxy), ("quality", "overall quality (LLM judge, 0-100)"),
                       ("proxy_quality", "overall quality proxy (100 x ROUGE-L)"), ("features", "feature identification (LLM judge, 1-4)"),
                       ("proxy_feature_score", "feature identification proxy (1-4)")):
        if key in head:
            lo, hi = head.get(f"{key}_lo"), head.get(f"{key}_hi")
            span = f"  [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
            lines.append(f"  {label}: {head[key]:.3g}{span}")
    levels = [f"{lv} {head[f'defect_accuracy_{lv}']:.2f}" for lv in ("none", "low", "moderate", "high") if f"defect_accuracy_{lv}" in head]
    if levels:
        lines.append("  defect accuracy by context level: " + ", ".join(levels))
    console.print("\n".join(lines))


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), data: DataOpt = Path("data")) -> None:
    """Stage evaluate: the held-out questions answered by every row (the trained model, blind, base, majority; a
    vision model where a key is set), judged (offline proxy_* metrics, or an LLM judge with a key or base URL),
    95 % intervals over images; writes reports/eval.{json,html,md} and reports/eval_levels.csv, logs to MLflow.

    Example: glassllava evaluate --params params.yaml
    """
    from glassllava.evaluate import EvaluateInputError, run_evaluate
    from glassllava.llm import LLMError
    from glassllava.params import DataLayout

    p = _load(params)
    try:
        with _Progress() as progress:
            report = run_evaluate(p, DataLayout(data), progress=progress)
    except (EvaluateInputError, LLMError) as e:
        _fail(str(e))
    console.print(f"evaluate: {report.questions} questions on {report.images} images, rows {', '.join(report.rows)}; judge {report.judge}, "
                  f"{report.judge_failures} judge failures; {report.seconds} s")
    _print_headline(report.headline, report.report_html)


@app.command()
def promote(params: ParamsOpt = Path("params.yaml"), data: DataOpt = Path("data")) -> None:
    """The registry's candidate becomes champion only if it beats the champion on the same evaluation set by
    evaluate.promotion.margin on evaluate.promotion.metric (the champion is evaluated again when the set changed);
    the first candidate becomes champion. The decision and its reason: reports/promotion.json and MLflow.

    Example: glassllava promote
    """
    from glassllava.evaluate import promote_candidate
    from glassllava.params import DataLayout

    p = _load(params)
    try:
        with _Progress() as progress:
            record = promote_candidate(p, DataLayout(data), progress=progress)
    except (LookupError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"promotion: {record['action']}: {record['reason']}")


@app.command()
def rollback(
    params: ParamsOpt = Path("params.yaml"),
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the versions and in reports/promotion.json).")] = "manual rollback",
) -> None:
    """Make previous-champion the champion again.

    Example: glassllava rollback --reason "regression on new papers"
    """
    from glassllava.promotion import rollback as do_rollback

    p = _load(params)
    try:
        record = do_rollback(None, p.tracking.registered_model, p.evaluate.promotion, reason=reason, report_path=Path("reports") / "promotion.json")
    except LookupError as e:
        _fail(str(e))
    console.print(f"rollback: champion is now version {record.get('champion_version')}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question about the image.")],
    image: Annotated[Path, typer.Option("--image", exists=True, dir_okay=False, help="The micrograph (PNG, JPEG, TIFF).")],
    model: Annotated[Path, typer.Option("--model", exists=True, file_okay=False, help="A model folder (Hugging Face layout).")] = Path("data/model"),
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the answer and its timing.")] = False,
) -> None:
    """Ask the trained model about a micrograph; the answer streams as it is generated.

    Example: glassllava ask --model data/model --image micrograph.png "Are there defects in this glass?"
    """
    import time

    from PIL import Image, UnidentifiedImageError

    from glassllava.generate import load, stream_answer

    try:
        picture = Image.open(image)
        picture.load()
    except (UnidentifiedImageError, OSError) as e:
        _fail(f"{image}: not an image I can read ({e})")
    t0 = time.perf_counter()
    try:
        mdl, processor = load(model)
    except (OSError, ValueError) as e:
        _fail(f"{model}: cannot load the model ({e})")
    loaded = time.perf_counter()
    pieces, first = [], None
    for piece in stream_answer(mdl, processor, picture, question, max_new_tokens=max_new_tokens):
        first = first or time.perf_counter()
        pieces.append(piece)
        if not as_json:
            typer.echo(piece, nl=False)
    done = time.perf_counter()
    answer = "".join(pieces).strip()
    if as_json:
        n = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])
        typer.echo(json.dumps({"question": question, "image": str(image), "model": str(model), "answer": answer, "answer_tokens": n,
                               "load_s": round(loaded - t0, 3), "first_token_s": round((first or done) - loaded, 3),
                               "generate_s": round(done - loaded, 3), "tokens_per_s": round(n / max(done - loaded, 1e-9), 2)}, indent=1))
    else:
        typer.echo("")


@app.command()
def status(data: DataOpt = Path("data")) -> None:
    """Where the results are: each stage's tables with their row counts, and the figure gallery.

    Example: glassllava status
    """
    from rich.table import Table

    from glassllava.params import DataLayout
    from glassllava.report import pipeline_status

    rows = pipeline_status(DataLayout(data))
    if not rows:
        _fail(f"no results under {data}/ yet: run `make run` (or `dvc repro`)")
    table = Table(title="GlassLLaVA results")
    for col in ("stage", "what", "where"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@app.command()
def gallery(
    data: DataOpt = Path("data"),
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for index.html and gallery/ (default: <data>/gallery).")] = None,
) -> None:
    """Write the figure gallery again from the tables as they are now: index.html listing every paper (title,
    file name, counts of figures, panels, SEM panels, QA records, quarantined inputs) and one page per paper.
    The DVC stage `gallery` (after qa) writes the same pages into <data>/gallery; this command is for a look
    between stages or elsewhere. Open index.html from disk.

    Example: glassllava gallery --out /tmp/gallery
    """
    from glassllava.params import DataLayout
    from glassllava.report import write_figure_gallery

    layout = DataLayout(data)
    if not (layout.ingest / "papers.parquet").exists() and not (layout.figures / "figures.parquet").exists():
        _fail(f"no papers under {data}/ yet: run the ingest and figures stages (`make run`)")
    index = write_figure_gallery(layout, out)
    console.print(f"gallery: {index}")


@app.command()
def quarantine(
    data: DataOpt = Path("data"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """Every quarantined input: its original name, the reason, when it was seen, whether it is still among the
    sources, and where its bytes are kept. A record outlives its file: taking a bad PDF out of the inbox does
    not lose why its copy in data/quarantine/ was kept.

    Example: glassllava quarantine
    """
    from rich.markup import escape
    from rich.table import Table

    from glassllava.params import DataLayout
    from glassllava.report import quarantine_records

    records = quarantine_records(DataLayout(data))
    if as_json:
        print(json.dumps(records, indent=1))
        return
    if not records:
        Console().print(f"nothing quarantined under {data}/")
        return
    table = Table(title=f"Quarantined inputs ({len(records)})")
    for col in ("name", "reason", "detail", "seen", "still a source", "kept at"):
        table.add_column(col)
    for r in records:
        cells = (r["name"], r["reason"], r["detail"], r["seen_at"] or "", "yes" if r["present"] else "no (removed)", r["kept_at"] or "")
        table.add_row(*(escape(c) for c in cells))  # file names and details are not rich markup
    Console().print(table)


@bench_app.command("figures")
def bench_figures(
    manifest: Annotated[Path, typer.Option("--manifest", exists=True, dir_okay=False, help="figures manifest.json (PDFs in pdfs/ beside it)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
    dpi: Annotated[int, typer.Option("--dpi", help="Render resolution (rendering is timed).")] = 150,
    layout_backend: Annotated[
        str, typer.Option("--layout-backend", help="heuristic (default) | heuristic+rapid | rapid (the model alone; needs the rapid extra).")
    ] = "heuristic",
) -> None:
    """Score figure-caption extraction with the pdffigures2 protocol (caption and pair P/R,
    strict F1 at IoU 0.5, recall at IoU 0.8, caption text similarity, pages per second).

    Example: glassllava bench figures --manifest ../shared/bench/figures/manifest.json --out figures.json
    """
    from glassllava.benchmarks import run_figures_benchmark
    from glassllava.layout import LayoutBackendUnavailable

    if layout_backend not in ("heuristic", "heuristic+rapid", "rapid"):
        _fail(f"--layout-backend {layout_backend!r}: expected heuristic, heuristic+rapid or rapid")
    try:
        result = run_figures_benchmark(manifest, dpi=dpi, layout_backend=layout_backend)
    except LayoutBackendUnavailable as e:
        _fail(str(e))
    _write_result(result, out)


@bench_app.command("panels")
def bench_panels(
    shared: Annotated[Path, typer.Option("--shared", help="The shared folder holding the annotated PDFs (bench/figures/pdfs/, data/papers/).")] = Path(
        "../shared"
    ),
    annotations: Annotated[
        Optional[Path], typer.Option("--annotations", exists=True, dir_okay=False, help="Panel annotations (default: the packaged benchdata/panels.json).")
    ] = None,
    corpus: Annotated[
        Optional[Path], typer.Option("--corpus", dir_okay=False, help="Also score a generated corpus manifest.json (its panel truth).")
    ] = None,
    hand: Annotated[bool, typer.Option("--hand/--no-hand", help="Score the hand-annotated set (needs --shared).")] = True,
    dpi: Annotated[Optional[list[int]], typer.Option("--dpi", min=36, help="Render resolution; repeat to compare (e.g. --dpi 100 --dpi 150 --dpi 300).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
) -> None:
    """Score panel splitting and panel letters: recall and precision at IoU 0.5 and 0.75 (one-to-one
    matching within each figure), label accuracy, exact panel counts, a diagnosis per figure.

    One set at one dpi writes that run's scores; several dpis or both sets write a summary per set
    and dpi, the figures whose panels change with the dpi, and every run in full.

    Example: glassllava bench panels --shared ../shared --corpus data/corpus/manifest.json --dpi 100 --dpi 150 --dpi 300 --out bench-results/panels.json
    """
    from glassllava.panel_bench import run_panel_benchmarks

    if not hand and corpus is None:
        _fail("nothing to score: --no-hand needs --corpus MANIFEST")
    if hand and not shared.is_dir():
        _fail(f"{shared} not found: the hand-annotated panel set reads its PDFs from the shared folder (../shared beside the repository); "
              "pass --shared DIR, or --no-hand --corpus data/corpus/manifest.json for the generated corpus alone")
    try:
        result = run_panel_benchmarks(annotations=annotations, shared=shared if hand else None, corpus=corpus, dpis=dpi or [150])
    except FileNotFoundError as e:
        _fail(str(e))
    _write_result(result, out)


@bench_app.command("sem")
def bench_sem(
    manifest: Annotated[Path, typer.Option("--manifest", exists=True, dir_okay=False, help="micrographs manifest.json")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
    image_only: Annotated[bool, typer.Option("--image-only", help="Ignore captions: classify from pixels alone.")] = False,
    clip_head: Annotated[
        Optional[Path], typer.Option("--clip-head", dir_okay=False, help="Score with this CLIP head (from `glassllava fit-sem --clip`).")
    ] = None,
) -> None:
    """Score the SEM-micrograph classifier on a labelled manifest (precision, recall, accuracy).

    The headline numbers are held out: the classifier is refitted per fold, folds grouped by paper,
    as `glassllava fit-sem` fits it; `shipped_model` holds the packaged model's numbers on the same
    panels (labelled in-sample when it was fitted on this manifest).

    Example: glassllava bench sem --manifest ../shared/data/micrographs/manifest.json --out sem.json
    """
    from glassllava.sem import SemModelError, run_sem_benchmark
    from glassllava.vision import VisionModelError

    try:
        _write_result(run_sem_benchmark(manifest, image_only=image_only, clip_head=clip_head), out)
    except (SemModelError, VisionModelError) as e:
        _fail(str(e))


@app.command("fit-sem")
def fit_sem(
    manifest: Annotated[Path, typer.Option("--manifest", exists=True, dir_okay=False, help="Labelled micrographs manifest.json.")],
    clip: Annotated[
        Optional[str],
        typer.Option(
            "--clip",
            help="Fit a CLIP head instead: open_clip model 'local-dir:/path' (open_clip_config.json + weights), a built-in name "
            "with --clip-weights, or 'hf-hub:org/repo'.",
        ),
    ] = None,
    clip_weights: Annotated[Optional[str], typer.Option("--clip-weights", help="Checkpoint file or open_clip tag for a built-in model name.")] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Where the JSON goes (default: the package's sem_model.json; with --clip, models/sem_clip_head.json)."),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=3, help="Cross-validation folds, grouped by paper.")] = 5,
) -> None:
    """Fit the SEM classifier (EfficientNet-Lite0 probe + pixel features + caption combiner); prints its held-out numbers.

    Without --clip this refits the classifier that ships (glassllava/sem_model.json). With --clip it
    fits a head on a CLIP backbone you have locally instead. Either records its backbone's weights
    fingerprint and refuses other weights.

    Example: glassllava fit-sem --manifest ../shared/data/micrographs/manifest.json
    """
    from glassllava.files import atomic_write_text
    from glassllava.sem import MODEL_PATH, SemModelError
    from glassllava.sem_fit import fit_clip_head, fit_default_model
    from glassllava.vision import VisionModelError

    try:
        with _Progress() as progress:
            report = lambda done, total: progress("embedding panels", done, total)  # noqa: E731
            if clip:
                head = fit_clip_head(manifest, clip, clip_weights, folds=folds, progress=report)
            else:
                head = fit_default_model(manifest, folds=folds, progress=report)
    except (VisionModelError, SemModelError, ValueError) as e:
        _fail(str(e))
    out = out or (Path("models/sem_clip_head.json") if clip else MODEL_PATH)
    atomic_write_text(out, json.dumps(head, indent=1) + "\n")
    console.print(f"wrote {out}; set figures.sem_clip_head: {out} in params.yaml to use it" if clip else f"wrote {out}")
    typer.echo(json.dumps(head["evaluation"], indent=1))


@bench_app.command("qa")
def bench_qa(
    manifest: Annotated[Path, typer.Option("--manifest", exists=True, dir_okay=False, help="generated corpus manifest.json (micrograph truth)")] = Path(
        "data/corpus/manifest.json"
    ),
    data: DataOpt = Path("data"),
    params: ParamsOpt = Path("params.yaml"),
    generator: Annotated[Optional[str], typer.Option("--generator", help="offline | llm (default: from params).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
) -> None:
    """Run the qa stage cold and again into a scratch folder, and score it against the generated
    corpus's truth: records per SEM panel, valid-record rate, defect-label and feature agreement,
    requests and tokens, and the no-change re-run's requests (must be 0).

    Example: glassllava bench qa --manifest data/corpus/manifest.json --out bench-results/qa.json
    """
    from glassllava.llm import LLMError
    from glassllava.qa_bench import run_qa_benchmark

    p = _load(params)
    try:
        _write_result(run_qa_benchmark(data, manifest, p.qa, generator=generator), out)
    except (FileNotFoundError, LLMError) as e:
        _fail(str(e))


@bench_app.command("learn")
def bench_learn(
    params: ParamsOpt = Path("params.yaml"),
    preset: Annotated[Optional[str], typer.Option("--preset", help="tiny | small | small-lora | paper | paper-lora (default: params model.preset).")] = None,
    papers: Annotated[int, typer.Option("--papers", min=4, help="Generated papers (45 % held out for evaluation).")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Corpus seed.")] = 7,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", min=0.05, max=0.9, help="Share of papers held out.")] = 0.45,
    work: Annotated[Path, typer.Option("--work", help="Work folder for the bench corpus (reused by later runs).")] = Path("bench-results/learn-data"),
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
) -> None:
    """Train a preset on a generated corpus and score the held-out papers: defect accuracy by context level,
    the blind (blank-image) baseline, the majority rate, token F1, the loss curve and the wall time.

    Example: glassllava bench learn --preset small --out bench-results/learn.json
    """
    from glassllava.learn_bench import run_learn_benchmark
    from glassllava.model import ModelWeightsMissing
    from glassllava.train import TrainingError

    p = _load(params)
    if preset:
        p = p.model_copy(update={"model": p.model.model_copy(update={"preset": preset})})
    try:
        with _Progress() as progress:
            result = run_learn_benchmark(p, work, papers=papers, seed=seed, eval_fraction=eval_fraction, progress=progress)
    except (TrainingError, ModelWeightsMissing) as e:
        _fail(str(e))
    _write_result(result, out)


@bench_app.command("train")
def bench_train(
    preset: Annotated[str, typer.Option("--preset", help="tiny | small | small-lora | paper | paper-lora")] = "small",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Conversations per micro-batch.")] = 8,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed optimizer steps (after the warm-up steps).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=1, help="Untimed steps first (compilation happens there).")] = 2,
    text_tokens: Annotated[int, typer.Option("--text-tokens", min=8, help="Text tokens per conversation besides the image block.")] = 80,
    spread: Annotated[float, typer.Option("--spread", min=0.0, max=0.9, help="Text lengths drawn uniformly within ± this fraction (padding to cut).")] = 0.0,
    random_init: Annotated[bool, typer.Option("--random-init", help="The preset's shapes with random weights (no weights needed).")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also time the plain transformers step in the same run (ratio in `speedup`).")] = False,
    checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Default: params.")] = None,
    every_n: Annotated[Optional[int], typer.Option("--every-n-layers", min=1, help="Checkpoint every n-th decoder layer (default: params).")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack conversations into rows (default: params).")] = None,
    loss_chunk: Annotated[Optional[int], typer.Option("--loss-chunk", min=1, help="Supervised tokens per head+loss chunk (default: params).")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile each decoder layer (default: params).")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step (default: params).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto | fp32 | bf16-autocast (default: params train.precision).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
) -> None:
    """Time training steps of a preset on synthetic conversations: samples/s, tokens/s, MFU, peak memory (CPU or GPU).

    The step is the training stage's own, with the levers of params.yaml's train section (each option
    here overrides one); --baseline times the plain transformers step beside it on the same data.

    Example: glassllava bench train --preset paper --random-init --baseline --batch 8 --text-tokens 200 --out train.json
    """
    from glassllava.model import ModelWeightsMissing
    from glassllava.train_bench import run_train_benchmark

    p = _load(params)
    if precision not in (None, "auto", "fp32", "bf16-autocast"):
        _fail(f"--precision {precision}: expected auto, fp32 or bf16-autocast")
    chosen = {"gradient_checkpointing": checkpointing, "gradient_checkpointing_every_n_layers": every_n, "packing": packing,
              "loss_chunk": loss_chunk, "compile": compile_, "grad_accum": grad_accum, "precision": precision}
    train = p.train.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    try:
        result = run_train_benchmark(p.model.model_copy(update={"preset": preset}), train, batch=batch, steps=steps, warmup=warmup,
                                     text_tokens=text_tokens, spread=spread, random_init=random_init, baseline=baseline)
    except ModelWeightsMissing as e:
        _fail(str(e))
    _write_result(result, out)


if __name__ == "__main__":  # pragma: no cover
    app()
