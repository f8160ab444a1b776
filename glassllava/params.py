"""Typed view of ``params.yaml``: one section per stage, unknown keys and wrong types rejected.

The defaults below are the embedded default (one CPU machine, no keys, generated corpus);
``params.yaml`` at the repository root repeats them with comments and is what DVC tracks.
Load once at an entry point with ``load_params()`` and hand each stage its own section.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GeneratedCorpusParams(_Section):
    papers: int = Field(12, ge=1, le=10_000)  # how many synthetic papers to write
    seed: int = 0  # same seed, same bytes


class CorpusParams(_Section):
    # Where papers come from; any combination of: generated (synthetic corpus with ground truth),
    # inbox (PDFs dropped into `inbox`), urls (one URL per line in `urls_file`).
    sources: list[Literal["generated", "inbox", "urls"]] = ["generated"]
    inbox: str = "data/inbox"
    urls_file: str = "data/inbox/urls.txt"
    generated: GeneratedCorpusParams = GeneratedCorpusParams()

    @field_validator("sources")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("corpus.sources must name at least one source")
        return list(dict.fromkeys(v))


class IngestParams(_Section):
    max_bytes: int = Field(200 * 2**20, ge=1)  # larger PDFs are quarantined as too_large
    max_pages: int = Field(400, ge=1)  # more pages are quarantined as too_large
    min_chars_per_page: float = Field(25.0, ge=0)  # below this on average: image_only
    download_timeout_s: float = Field(30.0, gt=0)
    download_retries: int = Field(3, ge=0)
    download_max_bytes: int = Field(200 * 2**20, ge=1)
    workers: int = Field(1, ge=1, le=64)  # parallel papers (processes) in the Prefect flow


class FiguresParams(_Section):
    layout_backend: Literal["heuristic", "layoutparser"] = "heuristic"
    # Only for layout_backend=layoutparser: a local model config/weights the user has installed.
    layoutparser_config: str | None = None
    layoutparser_weights: str | None = None
    dpi: int = Field(150, ge=36, le=600)  # render resolution of figure and panel PNGs
    min_figure_size_pt: float = Field(36.0, gt=0)  # smaller graphics are decorations, not figures
    split_panels: bool = True
    sem_threshold: float = Field(0.5, ge=0, le=1)  # panel is SEM when its score is at least this
    workers: int = Field(1, ge=1, le=64)


class QAParams(_Section):
    sem_panels_only: bool = True  # feed only SEM panels to question generation


class Params(_Section):
    corpus: CorpusParams = CorpusParams()
    ingest: IngestParams = IngestParams()
    figures: FiguresParams = FiguresParams()
    qa: QAParams = QAParams()


class ParamsError(ValueError):
    """params.yaml is missing a section, has an unknown key or a value of the wrong type."""


def load_params(path: str | os.PathLike | None = "params.yaml") -> Params:
    """Read ``path`` (missing file: the embedded default) into a validated ``Params``."""
    if path is None or not Path(path).exists():
        return Params()
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"{path}: {e}") from e


@dataclass(frozen=True)
class DataLayout:
    """Where each stage keeps its files, relative to one data root (``data/`` by default)."""

    root: Path = Path("data")

    @property
    def raw_pdfs(self) -> Path:  # content-addressed PDFs: <sha256>.pdf
        return self.root / "raw" / "pdfs"

    @property
    def corpus(self) -> Path:  # generated corpus (pdfs/ + manifest.json)
        return self.root / "corpus"

    @property
    def ingest(self) -> Path:
        return self.root / "ingest"

    @property
    def quarantine(self) -> Path:  # bad inputs kept with their reason, never deleted
        return self.root / "quarantine"

    @property
    def figures(self) -> Path:
        return self.root / "figures"
