"""One synthetic glass paper: samples -> micrographs and plots -> text that cites them -> PDF + truth.

``make_paper(paper_id, rng)`` returns the PDF bytes, the manifest entry (pdfplumber-style boxes)
and the full truth record (processing histories, composition, citing paragraphs per figure).
"""

from __future__ import annotations

import numpy as np
from reportlab.lib.pagesizes import A4, LETTER

from glassllava.synth import plots
from glassllava.synth import text as T
from glassllava.synth.history import THEMES, family_for_theme, sample_histories
from glassllava.synth.layout import Float, Panel, Paper, PaperStyle, Typesetter
from glassllava.synth.micrographs import (
    history_tendencies,
    render_micrograph,
    spec_as_dict,
    spec_from_history,
)

NB = T.NBSP
_CAPTION_FORMATS = [  # (figure caption prefix, table caption prefix, bold label, cite word, cite plural)
    ("Fig. {n}.", "Table {n}.", True, "Fig.", "Figs."),
    ("Figure {n}:", "Table {n}:", True, "Figure", "Figures"),
    ("FIG. {n}.", "TABLE {n}.", False, "Fig.", "Figs."),
    ("Fig. {n}", "Table {n}", True, "Fig.", "Figs."),
    ("Figure {n}.", "Table {n}.", False, "Figure", "Figures"),
]


def sample_style(rng: np.random.Generator) -> PaperStyle:
    columns = int(rng.choice([1, 2, 2]))
    page_name = str(rng.choice(["A4", "Letter"]))
    serif = rng.random() < 0.6
    body, bold, italic = (
        ("Times-Roman", "Times-Bold", "Times-Italic")
        if serif
        else ("Helvetica", "Helvetica-Bold", "Helvetica-Oblique")
    )
    size = float(rng.choice([9.0, 9.5, 10.0] if columns == 2 else [10.0, 10.5, 11.0]))
    fig_fmt, tab_fmt, bold_label, cite, cites = _CAPTION_FORMATS[
        int(rng.integers(len(_CAPTION_FORMATS)))
    ]
    return PaperStyle(
        pagesize=A4 if page_name == "A4" else LETTER,
        page_name=page_name,
        columns=columns,
        margin_x=float(rng.uniform(45, 60) if columns == 2 else rng.uniform(60, 80)),
        margin_top=float(rng.uniform(55, 70)),
        margin_bottom=float(rng.uniform(55, 70)),
        gutter=float(rng.uniform(14, 20)),
        body_font=body,
        bold_font=bold,
        italic_font=italic,
        size=size,
        leading=round(size * float(rng.uniform(1.15, 1.25)), 2),
        caption_size=size - 1,
        caption_format=fig_fmt,
        table_format=tab_fmt,
        caption_bold_label=bold_label,
        cite_word=cite,
        cite_plural=cites,
        image_format=str(rng.choice(["jpeg", "png"])),
        journal=T.pick(rng, T.JOURNALS),
    )


def _focus(history: dict) -> str | None:
    odds = history_tendencies(history)
    best = max(odds.items(), key=lambda kv: kv[1], default=(None, 0.0))
    return best[0] if best[1] >= 0.5 else None


class _PaperBuilder:
    """Collects floats in citation order and the paragraphs that cite them."""

    def __init__(self, paper_id: str, rng: np.random.Generator) -> None:
        self.paper_id, self.rng = paper_id, rng
        self.style = sample_style(rng)
        self.theme = str(rng.choice(THEMES))
        self.family = family_for_theme(self.theme, rng)
        self.samples = sample_histories(self.theme, self.family, rng)
        self.floats: dict[str, Float] = {}
        self.blocks: list[tuple] = []
        self.n_fig = 0
        self.citing: dict[str, list[str]] = {}
        self.causes_said: set[str] = set()

    # -------------------------------------------------- citations
    def cite(self, n: int, panel: str | None = None, form: int | None = None) -> str:
        w = self.style.cite_word
        if panel is None:
            return f"{w}{NB}{n}"
        form = int(self.rng.integers(3)) if form is None else form
        return [f"{w}{NB}{n}{panel}", f"{w}{NB}{n}({panel})", f"{w}{NB}{n}{panel}"][
            form
        ]

    def para(self, text: str, keys: list[str]) -> None:
        self.blocks.append(("para", text, keys))
        for k in keys:
            self.citing.setdefault(k, []).append(text.replace(NB, " "))

    # -------------------------------------------------- floats
    def new_figure(
        self, panels: list[Panel], grid, caption_body: str | None, is_sem: bool
    ) -> Float:
        self.n_fig += 1
        n = self.n_fig
        prefix = self.style.caption_format.format(n=n).replace(" ", NB)
        labels = (
            [chr(ord("a") + k) for k in range(len(panels))]
            if len(panels) > 1
            else [None]
        )
        for p, lab in zip(panels, labels):
            p.label = lab
        if is_sem:
            caption = T.sem_caption(
                prefix,
                [
                    {"label": p.label, "truth": p.truth, "history": p.history}
                    for p in panels
                ],
                self.rng,
            )
        else:
            caption = f"{prefix} {caption_body}"
        one_col = self.style.columns == 1
        rows, cols = grid
        if one_col:
            width_mode = (
                "side" if (cols == 1 and self.rng.random() < 0.45) else "column"
            )
            frac = {1: 0.55, 2: 0.85, 3: 1.0}[cols] if width_mode == "column" else 0.55
            if cols == 1 and rows == 1 and width_mode == "column":
                frac = float(self.rng.choice([0.5, 0.6, 0.7]))
        else:
            width_mode = "wide" if cols >= 2 else "column"
            frac = (
                {1: 1.0, 2: float(self.rng.choice([0.7, 0.85])), 3: 1.0}[cols]
                if width_mode == "wide"
                else 1.0
            )
        position = (
            "side"
            if width_mode == "side"
            else ("above" if self.rng.random() < 0.15 else "below")
        )
        f = Float(
            key=f"fig:{n}",
            kind="figure",
            label=str(n),
            caption=caption,
            prefix=prefix,
            panels=panels,
            grid=grid,
            width_mode=width_mode,
            width_frac=frac,
            caption_position=position,
            single_image=is_sem and len(panels) > 1 and self.rng.random() < 0.35,
            is_sem=is_sem,
        )
        self.floats[f.key] = f
        return f

    def sem_panels(self, histories: list[dict], detail: bool = False) -> list[Panel]:
        panels = []
        for h in histories:
            spec = spec_from_history(h, self.rng, focus=_focus(h))
            specs = [spec]
            if detail:  # a second field of view of the same sample
                specs.append(spec_from_history(h, self.rng, focus=spec.phenomena[0]))
            for sp in specs:
                image, truth = render_micrograph(sp, self.rng)
                truth["sample_id"] = h["sample_id"]
                truth["spec"] = spec_as_dict(sp)
                panels.append(Panel(label=None, image=image, truth=truth, history=h))
        return panels

    # -------------------------------------------------- sections
    def build(self) -> Paper:
        rng, s = self.rng, self.style
        samples = self.samples
        table_prefix = s.table_format.format(n=1).replace(" ", NB)
        header, rows = plots.table_rows(samples)
        self.floats["tab:1"] = Float(
            key="tab:1",
            kind="table",
            label="1",
            prefix=table_prefix,
            caption=f"{table_prefix} Nominal and analysed composition (mol%) and characteristic temperatures of the {self.family} glass.",
            table=(header, rows),
            width_mode="column",
            width_frac=1.0 if s.columns == 2 else 0.8,
            caption_position="above",
        )
        self.blocks.append(("heading", "1. Introduction", 1))
        for p in T.introduction(self.theme, self.family, rng):
            self.para(p, [])
        self.blocks.append(("heading", "2. Experimental", 1))
        for k, (sub, p) in enumerate(T.methods(samples, rng, f"Table{NB}1")):
            self.blocks.append(("heading", f"2.{k + 1}. {sub}", 2))
            self.para(p, ["tab:1"] if k == 0 else [])
        self.blocks.append(("heading", "3. Results and discussion", 1))
        plots_first = (
            self.theme in ("crystallisation", "phase_separation") or rng.random() < 0.5
        )
        if plots_first:
            self.blocks.append(
                ("heading", "3.1. Thermal analysis and X ray diffraction", 2)
            )
            self._plot_section()
            self.blocks.append(("heading", "3.2. Microstructure", 2))
            self._sem_section()
        else:
            self.blocks.append(("heading", "3.1. Microstructure", 2))
            self._sem_section()
            self.blocks.append(
                ("heading", "3.2. Thermal analysis and X ray diffraction", 2)
            )
            self._plot_section()
        self.blocks.append(("heading", "4. Conclusions", 1))
        self.para(self._conclusions(), self._range_cite_keys)
        self.blocks.append(("heading", "Acknowledgements", 1))
        self.para(
            "The authors thank the technical staff for help with sample preparation and microscopy. "
            "This work is entirely synthetic and was generated for testing document analysis software.",
            [],
        )
        self.blocks.append(("heading", "References", 1))
        self.blocks.append(("refs", T.references(rng, int(rng.integers(8, 16)))))
        keywords = f"{self.family} glass; scanning electron microscopy; {self.theme.replace('_', ' ')}; microstructure"
        return Paper(
            title=T.title(self.theme, self.family, rng),
            authors=T.authors(rng),
            affiliation=T.pick(rng, T.AFFILIATIONS),
            abstract=T.abstract(self.theme, self.family, samples, rng),
            keywords=keywords,
            blocks=self.blocks,
            floats=self.floats,
        )

    def _plot_section(self) -> None:
        rng = self.rng
        samples = self.samples
        dsc, xrd = plots.dsc_data(samples, rng), plots.xrd_data(samples, rng)
        aspect = 0.72
        cryst = [x["sample"] for x in xrd["series"] if x["crystalline"]]
        dsc0 = dsc["series"][0]
        dsc_text = (
            f"the DSC curve shows the glass transition at about {dsc0['Tg_C']} °C, followed by an exothermic crystallisation peak "
            f"at {dsc0['Tx_C']} °C and the melting endotherm"
        )
        xrd_text = "the XRD patterns of the samples " + (
            f"{', '.join(cryst)} show sharp reflections of {samples[0]['properties']['crystal']} on top of the amorphous halo, whereas the others are fully amorphous"
            if cryst
            else "show only the broad amorphous halo, without any Bragg reflections"
        )
        if rng.random() < 0.5:  # one figure, two vector panels
            f = self.new_figure(
                [
                    Panel(None, plot=dsc, aspect=aspect),
                    Panel(None, plot=xrd, aspect=aspect),
                ],
                (1, 2),
                "(a) DSC curves of the glass at different heating rates; (b) XRD patterns of the samples.",
                is_sem=False,
            )
            n = f.label
            self.para(
                f"{self.cite(n, 'a')} shows that {dsc_text}. According to {self.cite(n, 'b')}, {xrd_text}. "
                "The difference between the onset of crystallisation and the glass transition is a common measure of glass stability.",
                [f.key],
            )
        else:
            f1 = self.new_figure(
                [Panel(None, plot=dsc, aspect=aspect)],
                (1, 1),
                "DSC curves of the as annealed glass measured at different heating rates.",
                is_sem=False,
            )
            self.para(
                f"As seen in {self.cite(f1.label)}, {dsc_text}. The stability parameter Tx minus Tg amounts to about "
                f"{dsc0['Tx_C'] - dsc0['Tg_C']} K.",
                [f1.key],
            )
            f2 = self.new_figure(
                [Panel(None, plot=xrd, aspect=aspect)],
                (1, 1),
                "XRD patterns of the samples (Cu K alpha radiation).",
                is_sem=False,
            )
            self.para(
                f"The XRD patterns are compared in {self.cite(f2.label)}: {xrd_text}.",
                [f2.key],
            )

    def _sem_section(self) -> None:
        rng, samples = self.rng, self.samples
        mode = str(rng.choice(["per_sample", "grid", "mixed"]))
        groups: list[
            tuple[list[dict], bool]
        ] = []  # (samples in the figure, with a detail field)
        if mode == "grid" and len(samples) >= 2:
            groups.append((samples[:4], False))
            groups.append(([samples[-1]], False))
        elif mode == "mixed" and len(samples) >= 3:
            groups.append((samples[:2], False))
            groups += [([h], bool(rng.random() < 0.4)) for h in samples[2:]]
        else:
            groups += [([h], bool(rng.random() < 0.3)) for h in samples[:4]]
        sem_labels = []
        for hs, detail in groups:
            panels = self.sem_panels(hs, detail)
            n = len(panels)
            if self.style.columns == 2:
                grid = {
                    1: (1, 1),
                    2: (1, 2) if rng.random() < 0.6 else (2, 1),
                    3: (1, 3),
                    4: (2, 2),
                }[n]
            else:
                grid = {
                    1: (1, 1),
                    2: (1, 2) if rng.random() < 0.7 else (2, 1),
                    3: (1, 3),
                    4: (2, 2),
                }[n]
            f = self.new_figure(panels, grid, None, is_sem=True)
            sem_labels.append(int(f.label))
            self.para(self._sem_paragraph(f), [f.key])
        self._range_cite_keys: list[str] = []
        if len(sem_labels) >= 2:
            a, b = sem_labels[0], sem_labels[1]
            w = self.style.cite_plural
            self.para(
                f"A comparison of {w}{NB}{a}{NB}and{NB}{b} shows that the processing history, rather than the composition, "
                "controls which features appear in the micrographs. The same trend was found on several fields of view of every sample.",
                [f"fig:{a}", f"fig:{b}"],
            )
        if (
            len(sem_labels) >= 3
            and sem_labels[-1] - sem_labels[0] == len(sem_labels) - 1
        ):
            self._range = (
                f"{self.style.cite_plural}{NB}{sem_labels[0]}-{sem_labels[-1]}"
            )
            self._range_cite_keys = [f"fig:{k}" for k in sem_labels]
        else:
            self._range = None

    def _sem_paragraph(self, f: Float) -> str:
        rng = self.rng
        out = []
        for p in f.panels:
            ref = self.cite(f.label, p.label)
            who = T.sample_phrase(p.history)
            shows = T.phrase(p.truth["phenomena"][0], rng)
            opener = T.pick(
                rng,
                [
                    f"{ref} shows {who}, which exhibits {shows}.",
                    f"The micrograph of {who} ({ref}) reveals {shows}.",
                    f"In {who}, {shows} can be seen ({ref}).",
                ],
            )
            out.append(opener[0].upper() + opener[1:])
            out.append(T.describe_truth(p.truth, rng))
            for ph in p.truth["phenomena"]:
                if ph not in self.causes_said:
                    self.causes_said.add(ph)
                    out.append(T.cause(ph))
                    break
        return " ".join(x for x in out if x)

    def _conclusions(self) -> str:
        seen: dict[str, list[str]] = {}
        for f in self.floats.values():
            for p in f.panels:
                if p.truth:
                    for ph in p.truth["phenomena"]:
                        seen.setdefault(ph, [])
                        if p.history["sample_id"] not in seen[ph]:
                            seen[ph].append(p.history["sample_id"])
        parts = [
            f"{T.phrase(ph, self.rng)} in {', '.join(ids)}" for ph, ids in seen.items()
        ]
        lead = (
            f"The micrographs in {self._range} document"
            if getattr(self, "_range", None)
            else "Scanning electron microscopy documented"
        )
        return (
            f"{lead} the following features: " + "; ".join(parts) + ". "
            "Each of these features can be traced back to a specific step of the processing history. "
            "Careful control of melting, cooling and heat treatment is therefore essential to obtain glasses of the desired microstructure."
        )


def make_paper(paper_id: str, rng: np.random.Generator) -> tuple[bytes, dict, dict]:
    """Build one paper. Returns (pdf bytes, manifest document entry, truth record)."""
    builder = _PaperBuilder(paper_id, rng)
    paper = builder.build()
    pdf, pages = Typesetter(paper, builder.style, paper_id).run()
    figures, tables = [], []
    for f in sorted(paper.floats.values(), key=lambda f: (f.kind, int(f.label))):
        entry = {
            "kind": f.kind,
            "label": f.label,
            "caption": " ".join(f.caption.replace(NB, " ").split()),
            "page": f.placed["page"],
            "figure_bbox": f.placed["figure_bbox"],
            "caption_bbox": f.placed["caption_bbox"],
            "caption_position": f.placed["caption_position"],
            "width_mode": f.placed["width_mode"],
            "is_sem": f.is_sem,
            "single_image": f.single_image,
            "panels": f.placed["panels"],
        }
        (figures if f.kind == "figure" else tables).append(entry)
    s = builder.style
    doc = {
        "pdf": f"{paper_id}.pdf",
        "pages": pages,
        "n_figures": len(figures),
        "gt_kind": "synthetic",
        "layout": "two-column" if s.columns == 2 else "one-column",
        "page_size": s.page_name,
        "theme": builder.theme,
        "family": builder.family,
        "figures": figures + tables,
    }
    truth = {
        "paper_id": paper_id,
        "title": paper.title,
        "authors": paper.authors,
        "theme": builder.theme,
        "family": builder.family,
        "composition_mol_pct": builder.samples[0]["composition"],
        "samples": builder.samples,
        "style": {k: v for k, v in vars(s).items() if k != "pagesize"},
        "figures": [
            {
                **e,
                "citing_paragraphs": builder.citing.get(
                    f"{'fig' if e['kind'] == 'figure' else 'tab'}:{e['label']}", []
                ),
            }
            for e in figures + tables
        ],
        "paragraphs": [b[1].replace(NB, " ") for b in paper.blocks if b[0] == "para"],
    }
    return pdf, doc, truth
