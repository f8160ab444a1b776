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
    "Stages run in order: synth (optional) -> ingest -> figures. `dvc repro` runs them all.",
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


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
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


@bench_app.command("sem")
def bench_sem(
    manifest: Annotated[Path, typer.Option("--manifest", exists=True, dir_okay=False, help="micrographs manifest.json")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result JSON here.")] = None,
    image_only: Annotated[bool, typer.Option("--image-only", help="Ignore captions: classify from pixels alone.")] = False,
) -> None:
    """Score the SEM-micrograph classifier on a labelled manifest (precision, recall, accuracy).

    Example: glassllava bench sem --manifest ../shared/data/micrographs/manifest.json --out sem.json
    """
    from glassllava.sem import run_sem_benchmark

    _write_result(run_sem_benchmark(manifest, image_only=image_only), out)


if __name__ == "__main__":  # pragma: no cover
    app()
