"""The evaluation report: one self-contained HTML page (inline CSS, inline SVG plots, thumbnails as data URIs,
no script) and a Markdown summary, both from ``eval_metrics.summarise``.

What it shows: the paper's views with its published numbers beside ours (quality of simple vs complex
questions; defect accuracy as context grows), every row side by side with 95 % intervals and which
differences are real (only where the intervals do not overlap), every metric by context level, question type,
complexity and context type, defect precision / recall / F1, the judge's failures, and a gallery of examples
with each row's answer and the judge's verdicts. Offline proxies (``proxy_*``) are labelled as such
everywhere; the paper's numbers come from its GPT-4 judge and compare only with the LLM judge's.

Every string from papers, models and judges is HTML-escaped, and the page carries a Content-Security-Policy
that allows no script, so an escaping slip cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glassllava.eval_metrics import (
    BREAKDOWNS,
    CONTEXT_LEVELS,
    DEFECT_METRICS,
    LOWER_IS_BETTER,
    METRIC_INFO,
    MODEL_ROW,
    comparison,
    level_sort_key,
    metric_kind,
    metric_sort_key,
    parse_detail,
    records,
    row_sort_key,
)
from glassllava.files import atomic_write_text

# The paper's published numbers (GlassLLaVA, arXiv 2309.12460, as third-party summaries report them).
PAPER_REFERENCE: dict[str, Any] = {
    "citation": "Alshehri, Lee & Wang, GlassLLaVA (arXiv 2309.12460)",
    "caveat": ("The paper's numbers come from secondary summaries of it; its judge was GPT-4 with unpublished prompts, on 757 "
               "eval QA pairs about 77 SEM images. Only the LLM judge's numbers compare with them; offline proxies do not."),
    "quality": {"simple": 67.0, "complex": 77.0},  # overall quality, 0-100
    "defect_accuracy": {"none": 0.75, "high": 0.95},  # defect detection, no context → high context
    "eval_questions": 757,
    "eval_images": 77,
}

_CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"
_ROW_COLOURS = {"model": "#1f5fa8", "blind": "#8e6bbf", "base": "#e07b28", "majority": "#8a8a8a"}
_MORE_COLOURS = ("#2f9e5a", "#c2407a", "#17a2b8", "#a0522d", "#6b8e23", "#b8860b")
_BREAKDOWN_TITLES = {"context_level": "context level", "question_type": "question type", "complexity": "complexity",
                     "context_type": "context type"}
_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#f4f4f1}
main{max-width:1280px;margin:0 auto;padding:.5em 1.5em 3em}
h1{font-size:1.7em;margin:.6em 0 .2em}
h2{font-size:1.3em;margin:1.6em 0 .4em;padding-top:.4em;border-top:2px solid #d6d6d0}
h3{font-size:1.05em;margin:1.2em 0 .3em}
a{color:#1558b0}
.meta{color:#555;font-size:13px}
.note{background:#fff3cd;border:1px solid #e8d48a;padding:.45em .75em;border-radius:4px;max-width:64em}
.info{background:#e8f0fb;border:1px solid #b7cbe8;padding:.45em .75em;border-radius:4px;max-width:64em}
.toc{display:flex;flex-wrap:wrap;gap:.3em 1.1em;margin:.6em 0;font-size:14px}
.tag{display:inline-block;font-size:11px;line-height:1.5;padding:0 .45em;border-radius:3px;vertical-align:1px;white-space:nowrap}
.tag.llm{background:#1f5fa8;color:#fff}
.tag.proxy{background:#f0d9a8;color:#5a3d00;border:1px solid #d9b871}
.tag.truth{background:#2f9e5a;color:#fff}
.tag.paper{background:#333;color:#fff}
.wrap{overflow-x:auto;margin:.5em 0 1em}
table{border-collapse:collapse;background:#fff;margin:.3em 0}
th,td{border:1px solid #d6d6d6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#ecece8;font-weight:600}
thead th{text-align:center}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.empty{color:#aaa;text-align:center}
tr.paper td{background:#f1f1ee;font-style:italic}
.ci{color:#666;font-size:12px}
.cnt{color:#888;font-size:11.5px}
.up{color:#1b7a3a;font-weight:600}
.down{color:#b3261e;font-weight:600}
.same{color:#888}
td.bad{background:#fbe3e1}
th.rowname,td.rn{white-space:nowrap}
table.compact{font-size:13px}
table.compact td,table.compact th{padding:2px 7px}
table.compact tr.grp th{background:#f3f3ef;font-weight:600;text-align:left;font-size:12px;color:#444;padding:1px 7px}
table.compact td.lv{max-width:9em;color:#333}
.pair{display:flex;flex-wrap:wrap;gap:0 1.2em;align-items:flex-start}
.pair figure.plot{flex:none}
.pair>.wrap{flex:1 1 420px;margin-top:.6em}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;vertical-align:-1px}
figure.plot{margin:.6em 0 1em;background:#fff;border:1px solid #d6d6d6;border-radius:6px;padding:.5em .8em;display:inline-block;max-width:100%}
figure.plot svg{display:block;max-width:100%;height:auto}
figure.plot figcaption{font-size:13px;color:#444}
.plots{display:flex;flex-wrap:wrap;gap:0 1em;align-items:flex-start}
.ex{background:#fff;border:1px solid #d6d6d6;border-radius:6px;padding:.8em 1em;margin:1em 0}
.exhead{display:flex;gap:1em;align-items:flex-start}
.exhead img{flex:none;width:200px;height:auto;max-height:260px;object-fit:contain;border:1px solid #ddd;background:#eee}
.noimg{flex:none;width:160px;height:110px;border:1px dashed #bbb;color:#888;font-size:12px;display:flex;align-items:center;
 justify-content:center;text-align:center;padding:.4em}
.q{margin:.2em 0 .4em;font-weight:600}
.ref{margin:.2em 0;color:#333}
.answers{width:100%;margin-top:.6em;font-size:14px}
.answers td:first-child{white-space:nowrap;width:1%}
.answers td:nth-child(2){width:40%}
.answer{white-space:pre-wrap;overflow-wrap:anywhere}
.answer.none{color:#999;font-style:italic}
ul.verdicts{margin:0;padding-left:1.1em}
ul.verdicts li{margin:.1em 0;overflow-wrap:anywhere}
ul.verdicts li.fail,.fail-inline{color:#b3261e}
ul.verdicts li.proxies{list-style:none;margin-left:-1.1em;margin-top:.3em;font-size:13px;color:#444}
.score{font-weight:600;font-variant-numeric:tabular-nums}
"""


# ---- formatting ---------------------------------------------------------------------------------------
def _esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _is_rate(metric: str, stat: str = "mean") -> bool:
    return metric in DEFECT_METRICS or stat in ("accuracy", "precision", "recall", "f1", "claim_accuracy")


def fmt(metric: str, value: float | None, stat: str = "mean") -> str:
    """A metric's number as the report prints it: rates in %, 0-100 scores with one decimal, 1-4 with two,
    0-1 proxies with three."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if _is_rate(metric, stat):
        return f"{100 * value:.1f}%"
    scale = METRIC_INFO.get(metric, {}).get("scale")
    if scale in ("0-100", "0-100+") or stat == "ratio_of_means":
        return f"{value:.1f}"
    if scale in ("1-4", "count"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ci_text(metric: str, lo: float | None, hi: float | None, stat: str = "mean") -> str:
    if lo is None or hi is None:
        return ""
    return f"[{fmt(metric, lo, stat).rstrip('%')}–{fmt(metric, hi, stat)}]"


def _kind_tag(metric: str) -> str:
    kind = metric_kind(metric)
    text = {"llm": "LLM judge", "proxy": "offline proxy", "truth": "ground truth"}[kind]
    return f"<span class='tag {kind}'>{text}</span>"


def _metric_title(metric: str) -> str:
    info = METRIC_INFO.get(metric)
    label = info["label"] if info else metric
    scale = f", {info['scale']}" if info else ""
    return f"<code>{_esc(metric)}</code> {_esc(label)}{_esc(scale)} {_kind_tag(metric)}"


def _colours(rows: list[str]) -> dict[str, str]:
    out, k = {}, 0
    for r in rows:
        if r in _ROW_COLOURS:
            out[r] = _ROW_COLOURS[r]
        else:
            out[r] = _MORE_COLOURS[k % len(_MORE_COLOURS)]
            k += 1
    return out


def _swatch(colour: str) -> str:
    return f"<span class=swatch style='background:{colour}'></span>"


def _value_td(metric: str, c: dict | None, stat: str = "mean", *, counts: bool = False, extra: str = "") -> str:
    if c is None or c.get(stat) is None:
        failed = f"<br><span class=cnt>{c['failures']} failed</span>" if c and c.get("failures") else ""
        return f"<td class=empty>–{failed}</td>"
    prefix = "" if stat == "mean" else f"{stat}_"
    text = f"<b>{fmt(metric, c[stat], stat)}</b>{extra}<br><span class=ci>{_ci_text(metric, c.get(prefix + 'lo'), c.get(prefix + 'hi'), stat)}</span>"
    if counts:
        n = c["n_claims"] if stat in ("precision", "recall", "f1") and "n_claims" in c else c["n"]
        text += f"<br><span class=cnt>n {n} · {c['n_images']} img" + (f" · {c['failures']} failed" if c["failures"] else "") + "</span>"
    return f"<td class=n title='95 % interval, bootstrap over images'>{text}</td>"


# ---- inline SVG plots -----------------------------------------------------------------------------------
def _nice_step(span: float, n: int = 5) -> float:
    raw = span / n if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for f in (1, 2, 2.5, 5, 10):
        if raw <= f * magnitude + 1e-12:
            return f * magnitude
    return 10 * magnitude


def _axis(values: list[float | None], metric: str, rate: bool) -> tuple[float, list[float]]:
    """The y axis's top and ticks: 0-100 % for rates, the metric's scale where the data fit in it, else a round
    number above the largest value."""
    if rate:
        return 1.0, [i / 5 for i in range(6)]
    hi = METRIC_INFO.get(metric, {}).get("hi")
    top = max([v for v in values if v is not None] or [1.0])
    if top <= 0:  # every value is 0 (no hallucinated feature anywhere): a unit axis, not a zero-high one
        top = 1.0
    if hi is not None and top <= hi:
        top = float(hi)
    step = 1.0 if top == 4.0 else _nice_step(top)
    ymax = math.ceil(top / step - 1e-9) * step
    return ymax, [round(step * i, 9) for i in range(int(round(ymax / step)) + 1)]


def _tick_label(v: float, rate: bool) -> str:
    return f"{100 * v:.0f}" if rate else f"{v:g}"


def _svg_frame(width: int, height: int, label: str) -> list[str]:
    return [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='{_esc(label)}' font-family='system-ui,sans-serif' font-size='12'>",
            f"<rect x='0' y='0' width='{width}' height='{height}' fill='#fff'/>"]


def _legend(parts: list[str], x: int, y: int, items: list[tuple[str, str, str]]) -> None:
    """items: (label, colour, mark: line|bar|diamond)."""
    for i, (label, colour, mark) in enumerate(items):
        yy = y + 18 * i
        if mark == "diamond":
            parts.append(f"<path d='M{x + 8} {yy - 6} l6 6 l-6 6 l-6 -6 z' fill='#fff' stroke='#111' stroke-width='1.6'/>")
        elif mark == "tick":
            parts.append(f"<line x1='{x}' y1='{yy}' x2='{x + 16}' y2='{yy}' stroke='#111' stroke-width='2' stroke-dasharray='4 2'/>")
        elif mark == "bar":
            parts.append(f"<rect x='{x + 2}' y='{yy - 6}' width='12' height='12' fill='{colour}'/>")
        else:
            parts.append(f"<line x1='{x}' y1='{yy}' x2='{x + 16}' y2='{yy}' stroke='{colour}' stroke-width='2.5'/>"
                         f"<circle cx='{x + 8}' cy='{yy}' r='3.5' fill='{colour}'/>")
        parts.append(f"<text x='{x + 22}' y='{yy + 4}' fill='#222'>{_esc(label)}</text>")


def _grid(parts: list[str], left: int, top: int, pw: int, ph: int, ymax: float, ticks: list[float], rate: bool, ylabel: str) -> None:
    for t in ticks:
        y = top + ph - ph * t / ymax
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{left + pw}' y2='{y:.1f}' stroke='#e4e4e0'/>")
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' fill='#555'>{_tick_label(t, rate)}</text>")
    parts.append(f"<line x1='{left}' y1='{top + ph}' x2='{left + pw}' y2='{top + ph}' stroke='#888'/>")
    parts.append(f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + ph}' stroke='#888'/>")
    parts.append(f"<text transform='translate(14 {top + ph / 2:.0f}) rotate(-90)' text-anchor='middle' fill='#333'>{_esc(ylabel)}</text>")


def svg_line_plot(series: dict[str, dict[str, dict]], levels: list[str], metric: str, *, colours: dict[str, str],
                  paper: dict[str, float] | None = None, stat: str = "mean", ylabel: str = "", title: str = "") -> str:
    """Points with 95 % interval bars per row across ``levels`` (x), joined by lines; the paper's points as
    open diamonds. ``series``: {row: {level: cell}}."""
    rate = _is_rate(metric, stat)
    prefix = "" if stat == "mean" else f"{stat}_"
    rows = list(series)
    legend_w = 16 + 7 * max([len(r) for r in rows] + [len("paper (endpoints)")])
    left, top, pw, ph = 54, 14, max(300, 80 * len(levels)), 220
    width, height = left + pw + 24 + legend_w, top + ph + 46
    ymax, ticks = _axis([c.get(prefix + "hi") for s in series.values() for c in s.values()], metric, rate)
    parts = _svg_frame(width, height, title or f"{metric} by context level")
    _grid(parts, left, top, pw, ph, ymax, ticks, rate, ylabel)
    step = pw / len(levels)
    xs = {lv: left + step * (i + 0.5) for i, lv in enumerate(levels)}
    for lv in levels:
        parts.append(f"<text x='{xs[lv]:.1f}' y='{top + ph + 18}' text-anchor='middle' fill='#333'>{_esc(lv)}</text>")
    parts.append(f"<text x='{left + pw / 2:.0f}' y='{top + ph + 38}' text-anchor='middle' fill='#333'>context level</text>")

    def y(v: float) -> float:
        return top + ph - ph * min(max(v, 0.0), ymax) / ymax

    dodge = min(10.0, step / (len(rows) + 2))
    for i, row in enumerate(rows):
        colour = colours[row]
        off = (i - (len(rows) - 1) / 2) * dodge
        points = [(lv, series[row][lv]) for lv in levels if lv in series[row] and series[row][lv].get(stat) is not None]
        if len(points) > 1:
            path = " ".join(f"{xs[lv] + off:.1f},{y(c[stat]):.1f}" for lv, c in points)
            parts.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='2' stroke-opacity='.85'/>")
        for lv, c in points:
            x = xs[lv] + off
            lo, hi = c.get(prefix + "lo"), c.get(prefix + "hi")
            tip = f"{row}, {lv}: {fmt(metric, c[stat], stat)} {_ci_text(metric, lo, hi, stat)}, n {c['n']}"
            parts.append("<g>")
            parts.append(f"<title>{_esc(tip)}</title>")
            if lo is not None and hi is not None:
                parts.append(f"<line x1='{x:.1f}' y1='{y(lo):.1f}' x2='{x:.1f}' y2='{y(hi):.1f}' stroke='{colour}' stroke-width='1.6'/>"
                             f"<line x1='{x - 3:.1f}' y1='{y(lo):.1f}' x2='{x + 3:.1f}' y2='{y(lo):.1f}' stroke='{colour}' stroke-width='1.6'/>"
                             f"<line x1='{x - 3:.1f}' y1='{y(hi):.1f}' x2='{x + 3:.1f}' y2='{y(hi):.1f}' stroke='{colour}' stroke-width='1.6'/>")
            parts.append(f"<circle cx='{x:.1f}' cy='{y(c[stat]):.1f}' r='4' fill='{colour}' stroke='#fff' stroke-width='1'/></g>")
    items = [(r, colours[r], "line") for r in rows]
    if paper:
        known = [(lv, v) for lv, v in paper.items() if lv in xs]
        if len(known) > 1:
            path = " ".join(f"{xs[lv]:.1f},{y(v):.1f}" for lv, v in known)
            parts.append(f"<polyline points='{path}' fill='none' stroke='#111' stroke-width='1.2' stroke-dasharray='5 4'/>")
        for lv, v in known:
            x, yy = xs[lv], y(v)
            parts.append(f"<g><title>{_esc(f'paper, {lv}: {fmt(metric, v, stat)}')}</title>"
                         f"<path d='M{x:.1f} {yy - 7:.1f} l7 7 l-7 7 l-7 -7 z' fill='#fff' fill-opacity='.6' stroke='#111' stroke-width='1.8'/></g>")
        items.append(("paper (endpoints)", "#111", "diamond"))
    _legend(parts, left + pw + 24, top + 10, items)
    parts.append("</svg>")
    return "".join(parts)


def svg_bar_plot(series: dict[str, dict[str, dict]], categories: list[str], metric: str, *, colours: dict[str, str],
                 xlabel: str, ylabel: str = "", reference: dict[str, float] | None = None, scale: float = 1.0, title: str = "") -> str:
    """Grouped bars (one group per category, one bar per row) with 95 % interval whiskers; ``reference``
    values (the paper's) as dashed black ticks across their group. Values are multiplied by ``scale``."""
    rate = _is_rate(metric)
    rows = list(series)
    legend_w = 16 + 7 * max([len(r) for r in rows] + [len("paper")])
    group = max(56, 12 * len(rows) + 16)
    left, top, ph = 54, 14, 200
    pw = max(240, group * len(categories))
    width, height = left + pw + 24 + legend_w, top + ph + 46
    values = [None if c.get("hi") is None else c["hi"] * scale for s in series.values() for c in s.values()]
    values += list((reference or {}).values())
    ymax, ticks = _axis(values, metric, rate)
    parts = _svg_frame(width, height, title or f"{metric} by {xlabel}")
    _grid(parts, left, top, pw, ph, ymax, ticks, rate, ylabel)
    step = pw / max(1, len(categories))
    bar = min(22.0, (step - 18) / max(1, len(rows)))

    def y(v: float) -> float:
        return top + ph - ph * min(max(v, 0.0), ymax) / ymax

    for g, cat in enumerate(categories):
        x0 = left + step * g + (step - bar * len(rows)) / 2
        label = cat if len(cat) <= 14 else cat[:13] + "…"
        parts.append(f"<text x='{left + step * (g + 0.5):.1f}' y='{top + ph + 18}' text-anchor='middle' fill='#333'>"
                     f"<title>{_esc(cat)}</title>{_esc(label)}</text>")
        for i, row in enumerate(rows):
            c = series[row].get(cat)
            if c is None or c.get("mean") is None:
                continue
            v, lo, hi = c["mean"] * scale, c.get("lo"), c.get("hi")
            x = x0 + bar * i
            tip = f"{row}, {cat}: {fmt(metric, c['mean'])} {_ci_text(metric, lo, hi)}, n {c['n']}"
            parts.append(f"<g><title>{_esc(tip)}</title><rect x='{x + 1:.1f}' y='{y(v):.1f}' width='{bar - 2:.1f}' "
                         f"height='{top + ph - y(v):.1f}' fill='{colours[row]}'/>")
            if lo is not None and hi is not None:
                cx = x + bar / 2
                parts.append(f"<line x1='{cx:.1f}' y1='{y(lo * scale):.1f}' x2='{cx:.1f}' y2='{y(hi * scale):.1f}' stroke='#222' stroke-width='1.2'/>"
                             f"<line x1='{cx - 3:.1f}' y1='{y(lo * scale):.1f}' x2='{cx + 3:.1f}' y2='{y(lo * scale):.1f}' stroke='#222' stroke-width='1.2'/>"
                             f"<line x1='{cx - 3:.1f}' y1='{y(hi * scale):.1f}' x2='{cx + 3:.1f}' y2='{y(hi * scale):.1f}' stroke='#222' stroke-width='1.2'/>")
            parts.append("</g>")
        if reference and cat in reference:
            yy = y(reference[cat])
            parts.append(f"<g><title>{_esc(f'paper, {cat}: {reference[cat]:g}')}</title><line x1='{left + step * g + 4:.1f}' y1='{yy:.1f}' "
                         f"x2='{left + step * (g + 1) - 4:.1f}' y2='{yy:.1f}' stroke='#111' stroke-width='2' stroke-dasharray='6 3'/></g>")
    parts.append(f"<text x='{left + pw / 2:.0f}' y='{top + ph + 38}' text-anchor='middle' fill='#333'>{_esc(xlabel)}</text>")
    items = [(r, colours[r], "bar") for r in rows] + ([("paper", "#111", "tick")] if reference else [])
    _legend(parts, left + pw + 24, top + 10, items)
    parts.append("</svg>")
    return "".join(parts)


def _plot(svg: str, caption: str) -> str:
    import re

    width = re.search(r"width='(\d+)'", svg).group(1)  # the caption wraps within the plot's width
    return f"<figure class=plot>{svg}<figcaption style='max-width:{width}px'>{caption}</figcaption></figure>"


# ---- the page's sections -------------------------------------------------------------------------------
def _head(title: str) -> str:
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>\n"
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">\n"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>\n"
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style></head><body><main>")


def _llm_metrics(summary: dict) -> list[str]:
    return [m for m in summary["metrics"] if metric_kind(m) == "llm" and any(
        summary["cells"].get(r, {}).get(m, {}).get("all", {}).get("n") for r in summary["rows"])]


def _judge_note(summary: dict) -> str:
    llm = _llm_metrics(summary)
    proxies = [m for m in summary["metrics"] if metric_kind(m) == "proxy"]
    judges = sorted({j for m in llm for j in summary["judges"].get(m, {}) if j})
    if not llm:
        return ("<p class=note><b>No LLM judge ran: every number here is an offline proxy</b> "
                "(<code>proxy_*</code>: token overlap, ROUGE-L, feature-lexicon recall, a rule-based defect-claim reader, all "
                "against the reference answer). Proxies track an LLM judge poorly; they rank checkpoints and catch regressions, "
                "but they are not comparable with the paper's GPT-4-judged numbers.</p>")
    text = (f"<p class=info>Judged by the LLM judge ({', '.join(f'<code>{_esc(j)}</code>' for j in judges) or 'unnamed'}) on "
            f"{', '.join(f'<code>{_esc(m)}</code>' for m in llm)}.")
    if proxies:
        text += (" Numbers marked <span class='tag proxy'>offline proxy</span> (<code>proxy_*</code>) are offline scores against "
                 "the reference text, not the judge's, and do not compare with the paper's.")
    return text + "</p>"


def _paper_section(summary: dict, paper: dict, colours: dict[str, str]) -> list[str]:
    rows = summary["rows"]
    cells = summary["cells"]
    parts = ["<h2 id=paper>Against the paper</h2>",
             f"<p class=meta><span class='tag paper'>paper</span> {_esc(paper.get('citation', ''))}. {_esc(paper.get('caveat', ''))}</p>"]
    if paper.get("eval_questions"):
        parts.append(f"<p class=meta>The paper evaluated {paper['eval_questions']} questions about {paper.get('eval_images', '?')} images; "
                     f"this run has {summary['n_questions']} questions about {summary['n_images']} images.</p>")
    # quality: simple vs complex
    pq = paper.get("quality") or {}
    parts.append("<h3>Overall quality: simple vs complex questions</h3>")
    levels = ["simple", "complex"]
    sources = [(m, s) for m, s in (("quality", 1.0), ("proxy_rouge_l", 100.0)) if any(m in cells.get(r, {}) for r in rows)]
    if "quality" not in [m for m, _ in sources]:
        parts.append("<p class=note>No LLM-judged quality in this run, so nothing here compares with the paper's 67 / 77; "
                     "the proxy below (100 × ROUGE-L F against the reference) only shows the same split.</p>")
    head = "<tr><th></th><th>judge</th>" + "".join(f"<th>{lv}</th>" for lv in levels) + "<th>all questions</th></tr>"
    body = []
    if pq:
        body.append("<tr class=paper><td>paper</td><td>GPT-4</td>" + "".join(
            f"<td class=n><b>{pq[lv]:g}</b></td>" if lv in pq else "<td class=empty>–</td>" for lv in levels) + "<td class=empty>–</td></tr>")
    for metric, scale in sources:
        for row in rows:
            m = cells.get(row, {}).get(metric)
            if m is None:
                continue
            judge = "" if metric == "quality" else " 100 × ROUGE-L"
            tds = "".join(_scaled_td(metric, m["complexity"].get(lv), scale) for lv in levels)
            body.append(f"<tr><td class=rn>{_swatch(colours[row])}{_esc(row)}</td><td>{_kind_tag(metric)}{_esc(judge)}</td>{tds}"
                        f"{_scaled_td(metric, m['all'], scale)}</tr>")
    parts.append(f"<div class=wrap><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
    plots = []
    for metric, scale in sources:
        series = {r: cells[r][metric]["complexity"] for r in rows if metric in cells.get(r, {})}
        label = "quality (0-100)" if metric == "quality" else "100 × ROUGE-L F"
        ref = {k: v for k, v in pq.items() if k in levels} if metric == "quality" else None
        svg = svg_bar_plot(series, levels, "quality", colours=colours, xlabel="complexity", ylabel=label, reference=ref, scale=scale,
                           title=f"{metric} by complexity")
        cap = (f"{_kind_tag(metric)} {'Overall quality' if metric == 'quality' else 'Proxy quality: 100 × ROUGE-L F vs the reference'} "
               f"by complexity, 95 % intervals" + ("; dashed: the paper's 67 / 77." if ref else "; the paper's numbers are not drawn: a proxy does not compare."))
        plots.append(_plot(svg, cap))
    if plots:
        parts.append("<div class=plots>" + "".join(plots) + "</div>")
    # defect accuracy by context level
    pd = paper.get("defect_accuracy") or {}
    parts.append("<h3>Defect detection accuracy as context grows</h3>")
    defect = [m for m in DEFECT_METRICS if any(m in cells.get(r, {}) for r in rows)]
    if not defect:
        parts.append("<p class=meta>No defect judgments in this run.</p>")
    levels = [lv for lv in CONTEXT_LEVELS if any(lv in cells[r][m]["context_level"] for m in defect for r in rows if m in cells.get(r, {}))]
    levels += sorted({lv for m in defect for r in rows if m in cells.get(r, {}) for lv in cells[r][m]["context_level"]} - set(levels))
    head = "<tr><th></th><th>judge</th>" + "".join(f"<th>{_esc(lv)}</th>" for lv in levels) + "<th>all questions</th></tr>"
    body = []
    if pd and defect:
        body.append("<tr class=paper><td>paper</td><td>GPT-4</td>" + "".join(
            f"<td class=n><b>{100 * pd[lv]:.0f}%</b></td>" if lv in pd else "<td class=empty>–</td>" for lv in levels) + "<td class=empty>–</td></tr>")
    plots = []
    for metric in defect:
        for row in rows:
            m = cells.get(row, {}).get(metric)
            if m is None:
                continue
            tds = "".join(_value_td(metric, m["context_level"].get(lv)) for lv in levels)
            body.append(f"<tr><td class=rn>{_swatch(colours[row])}{_esc(row)}</td><td>{_kind_tag(metric)} <code>{metric}</code></td>{tds}"
                        f"{_value_td(metric, m['all'])}</tr>")
        series = {r: cells[r][metric]["context_level"] for r in rows if metric in cells.get(r, {})}
        ref = pd if metric == "defect" else None
        svg = svg_line_plot(series, levels, metric, colours=colours, paper=ref, ylabel="accuracy (%)", title=f"{metric} accuracy by context level")
        cap = (f"{_kind_tag(metric)} <code>{metric}</code>: share of defect answers judged correct, per context level, 95 % intervals "
               "(bootstrap over images)" + ("; diamonds: the paper (≈75 % with no context, ≈95 % with high context)."
                                            if ref else "; an offline proxy, so the paper's points are not drawn."))
        plots.append(_plot(svg, cap))
    if defect:
        parts.append(f"<div class=wrap><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
        parts.append("<div class=plots>" + "".join(plots) + "</div>")
    return parts


def _scaled_td(metric: str, c: dict | None, scale: float) -> str:
    if c is None or c.get("mean") is None:
        return "<td class=empty>–</td>"
    if scale == 1.0:
        return _value_td(metric, c)
    lo = "" if c.get("lo") is None else f"[{c['lo'] * scale:.1f}–{c['hi'] * scale:.1f}]"
    return f"<td class=n><b>{c['mean'] * scale:.1f}</b><br><span class=ci>{lo}</span></td>"


def _rows_section(summary: dict, colours: dict[str, str]) -> list[str]:
    rows, cells = summary["rows"], summary["cells"]
    parts = ["<h2 id=rows>All rows side by side</h2>",
             "<p class=meta>Mean (defect metrics: share correct) with its 95 % interval from a bootstrap over images "
             f"({summary['bootstrap']} resamples: all questions about an image are drawn together), n judged questions, images and "
             "judge failures. <span class=up>▲</span> / <span class=down>▼</span>: better / worse than <code>model</code>, called only "
             "where the two intervals do not overlap; an unmarked cell is not shown to differ.</p>"]
    head = "<tr><th>metric</th>" + "".join(f"<th>{_swatch(colours[r])}{_esc(r)}</th>" for r in rows) + "</tr>"
    body = []
    for metric in summary["metrics"]:
        tds = []
        for row in rows:
            c = cells.get(row, {}).get(metric, {}).get("all")
            mark = ""
            if row != MODEL_ROW and MODEL_ROW in rows:
                cmp = comparison(summary, row, MODEL_ROW, metric)
                if cmp and cmp["different"]:
                    mark = " <span class=up title='better than model: intervals do not overlap'>▲</span>" if cmp["better"] == row else \
                        " <span class=down title='worse than model: intervals do not overlap'>▼</span>"
            tds.append(_value_td(metric, c, counts=True, extra=mark))
        body.append(f"<tr><td>{_metric_title(metric)}</td>{''.join(tds)}</tr>")
    parts.append(f"<div class=wrap><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
    parts.append("<h3 id=differences>Which differences are real</h3>")
    if MODEL_ROW not in rows or len(rows) < 2:
        parts.append("<p class=meta>No <code>model</code> row to compare the others with.</p>")
        return parts
    others = [r for r in rows if r != MODEL_ROW]
    parts.append("<p class=meta>Each row against <code>model</code>: the difference model − row with its paired 95 % interval (a "
                 "bootstrap over images, the same draws for both rows). A difference is called real only when the two rows' own 95 % "
                 "intervals do not overlap: <span class=up>▲ model better</span>, <span class=down>▼ row better</span>; "
                 "<span class=same>≈</span> not shown to differ; <span class=same>≈*</span> the intervals overlap although the paired "
                 "interval excludes 0: suggestive, not called.</p>")
    head = "<tr><th>metric</th>" + "".join(f"<th class=rowname>{_swatch(colours[r])}{_esc(r)}</th>" for r in others) + "</tr>"
    body = []
    for metric in summary["metrics"]:
        tds = []
        for row in others:
            cmp = comparison(summary, MODEL_ROW, row, metric)
            if cmp is None or cmp["difference"] is None:
                tds.append("<td class=empty>–</td>")
                continue
            if cmp["different"]:
                verdict = "<span class=up>▲ model better</span>" if cmp["better"] == MODEL_ROW else f"<span class=down>▼ {_esc(row)} better</span>"
                why = "the intervals do not overlap"
            elif cmp["paired_excludes_zero"]:
                verdict, why = "<span class=same>≈*</span>", "the intervals overlap (the paired interval excludes 0): not called a difference"
            else:
                verdict, why = "<span class=same>≈</span>", "not shown to differ"
            tip = (f"model {fmt(metric, cmp['a']['value'])} {_ci_text(metric, cmp['a']['lo'], cmp['a']['hi'])} vs {row} "
                   f"{fmt(metric, cmp['b']['value'])} {_ci_text(metric, cmp['b']['lo'], cmp['b']['hi'])}: {why}")
            tds.append(f"<td class=n title='{_esc(tip)}'>{verdict}<br>{fmt_diff(metric, cmp['difference'])} "
                       f"<span class=ci>[{fmt_diff(metric, cmp['diff_lo'])}, {fmt_diff(metric, cmp['diff_hi'])}]</span></td>")
        body.append(f"<tr><td>{_metric_title(metric)}</td>{''.join(tds)}</tr>")
    parts.append(f"<div class=wrap><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
    return parts


def fmt_diff(metric: str, value: float | None) -> str:
    """A difference of two values of ``metric``, signed: rates in percentage points."""
    if value is None:
        return "–"
    if metric in DEFECT_METRICS:
        return f"{100 * value:+.1f} pts"
    scale = METRIC_INFO.get(metric, {}).get("scale")
    if scale in ("0-100", "0-100+"):
        return f"{value:+.1f}"
    if scale in ("1-4", "count"):
        return f"{value:+.2f}"
    return f"{value:+.3f}"


def _compact_td(metric: str, c: dict | None) -> str:
    if c is None or c.get("mean") is None:
        tip = f" title='{c['failures']} failed, none judged'" if c and c.get("failures") else ""
        return f"<td class=empty{tip}>–</td>"
    tip = f"n {c['n']} questions · {c['n_images']} images" + (f" · {c['failures']} failed" if c["failures"] else "")
    return (f"<td class=n title='{_esc(tip)}'><b>{fmt(metric, c['mean'])}</b><br>"
            f"<span class=ci>{_ci_text(metric, c.get('lo'), c.get('hi'))}</span></td>")


def _breakdown_section(summary: dict, colours: dict[str, str]) -> list[str]:
    rows, cells = summary["rows"], summary["cells"]
    parts = ["<h2 id=breakdown>Every metric by context level and question type</h2>",
             "<p class=meta>Per context level (none → high), question type, complexity and context type (a question counts under each of "
             "its context types), with 95 % intervals from the image bootstrap; hover a cell for its n. Small cells have wide "
             "intervals.</p>"]
    for metric in summary["metrics"]:
        have = [r for r in rows if metric in cells.get(r, {})]
        if not have:
            continue
        parts.append(f"<h3 id='m-{_esc(metric)}'>{_metric_title(metric)}</h3><div class=pair>")
        levels = {by: sorted({lv for r in have for lv in cells[r][metric][by]}, key=lambda lv, by=by: level_sort_key(by, lv))
                  for by in BREAKDOWNS}
        series = {r: cells[r][metric]["context_level"] for r in have}
        if levels["context_level"]:
            info = METRIC_INFO.get(metric, {})
            note = " Lower is better." if metric in LOWER_IS_BETTER else ""
            if metric in DEFECT_METRICS:
                svg = svg_line_plot(series, levels["context_level"], metric, colours=colours, ylabel="accuracy (%)", title=f"{metric} by context level")
            else:
                svg = svg_bar_plot(series, levels["context_level"], metric, colours=colours, xlabel="context level",
                                   ylabel=f"{metric} ({info.get('scale', '')})", title=f"{metric} by context level")
            parts.append(_plot(svg, f"{_kind_tag(metric)} <code>{_esc(metric)}</code> by context level, 95 % intervals.{note}"))
        head = "<tr><th></th>" + "".join(f"<th class=rowname>{_swatch(colours[r])}{_esc(r)}</th>" for r in have) + "</tr>"
        body = []
        for by in BREAKDOWNS:
            if levels[by]:
                body.append(f"<tr class=grp><th colspan={len(have) + 1}>by {_BREAKDOWN_TITLES[by]}</th></tr>")
            for lv in levels[by]:
                tds = "".join(_compact_td(metric, cells[r][metric][by].get(lv)) for r in have)
                body.append(f"<tr><td class=lv>{_esc(lv.replace('_', ' '))}</td>{tds}</tr>")
        all_tds = "".join(_compact_td(metric, cells[r][metric]["all"]) for r in have)
        body.append(f"<tr class=grp><th colspan={len(have) + 1}>all questions</th></tr><tr><td class=lv>all</td>{all_tds}</tr>")
        parts.append(f"<div class=wrap><table class=compact><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div></div>")
    return parts


def _defect_section(summary: dict, colours: dict[str, str]) -> list[str]:
    rows, cells = summary["rows"], summary["cells"]
    defect = [m for m in DEFECT_METRICS if any(m in cells.get(r, {}) for r in rows)]
    if not defect:
        return []
    parts = ["<h2 id=defect>Defect detection: accuracy, precision, recall, F1</h2>",
             "<p class=meta>Positive = a defect is present (gold <code>defect_present</code>). Accuracy is the share of answers judged "
             "correct; precision, recall and F1 compare each answer's claim (defect / no defect) with the gold label, over answers "
             "whose claim could be read. A row that never claims a defect has no precision (–).</p>"]
    stats = ("accuracy", "precision", "recall", "f1")
    for metric in defect:
        parts.append(f"<h3>{_metric_title(metric)}</h3>")
        head = "<tr><th>row</th>" + "".join(f"<th>{s}</th>" for s in stats) + "<th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>failed or unreadable</th></tr>"
        body = []
        for row in rows:
            c = cells.get(row, {}).get(metric, {}).get("all")
            if c is None:
                continue
            unreadable = c["failures"] + c["n"] - c["n_claims"]
            tds = "".join(_value_td(metric, c, s) for s in stats)
            tds += "".join(f"<td class=n>{c[k]}</td>" for k in ("tp", "fp", "fn", "tn"))
            tds += f"<td class='n{' bad' if unreadable else ''}'>{unreadable}</td>"
            body.append(f"<tr><td class=rn>{_swatch(colours[row])}{_esc(row)}</td>{tds}</tr>")
        parts.append(f"<div class=wrap><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
    return parts


def _failures_section(summary: dict, answers: list[dict], colours: dict[str, str]) -> list[str]:
    rows, cells = summary["rows"], summary["cells"]
    parts = ["<h2 id=failures>Judge failures</h2>",
             "<p class=meta>A judgment the judge could not give (a reply that is not valid JSON, truncated, out of range; for "
             "<code>proxy_defect</code> an answer whose claim cannot be read) is a failure: counted here and left out of every "
             "number above, never scored as 0.</p>"]
    head = "<tr><th>metric</th><th>judge</th>" + "".join(f"<th>{_swatch(colours[r])}{_esc(r)}</th>" for r in rows) + "</tr>"
    body = []
    for metric in summary["metrics"]:
        judges = ", ".join(f"{j or '?'} ({n})" for j, n in sorted(summary["judges"].get(metric, {}).items()))
        tds = []
        for row in rows:
            c = cells.get(row, {}).get(metric, {}).get("all")
            if c is None:
                tds.append("<td class=empty>–</td>")
                continue
            total = c["n"] + c["failures"]
            share = f" ({100 * c['failures'] / total:.1f}%)" if total and c["failures"] else ""
            empty = f"<br><span class=cnt>{c['empty_answers']} of them empty answers</span>" if c.get("empty_answers") else ""
            tds.append(f"<td class='n{' bad' if c['failures'] else ''}'>{c['failures']} of {total}{share}{empty}</td>")
        body.append(f"<tr><td><code>{_esc(metric)}</code> {_kind_tag(metric)}</td><td class=meta>{_esc(judges)}</td>{''.join(tds)}</tr>")
    parts.append(f"<div class=wrap><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
    notes = []
    if summary.get("unmatched"):
        notes.append(f"{summary['unmatched']} judgments name a (row, question) with no answer and were ignored.")
    if summary.get("duplicates"):
        notes.append(f"{summary['duplicates']} repeated judgments of the same (row, question, metric) were ignored (the first counts).")
    if notes:
        parts.append("<p class=note>" + " ".join(_esc(n) for n in notes) + "</p>")
    # the rows themselves: answers given, empty answers, time
    per_row: dict[str, list[dict]] = {}
    for a in answers:
        per_row.setdefault(a["row"], []).append(a)
    body = []
    for row in rows:
        rs = per_row.get(row, [])
        empty = sum(1 for a in rs if not (a.get("answer") or "").strip())
        tokens = sum(a.get("new_tokens") or 0 for a in rs) / max(1, len(rs))
        secs = sum(a.get("seconds") or 0.0 for a in rs) / max(1, len(rs))
        body.append(f"<tr><td class=rn>{_swatch(colours[row])}{_esc(row)}</td><td class=n>{len(rs)}</td><td class='n{' bad' if empty else ''}'>{empty}</td>"
                    f"<td class=n>{tokens:.1f}</td><td class=n>{secs:.2f}</td></tr>")
    parts.append("<h3>Answers per row</h3><div class=wrap><table><thead><tr><th>row</th><th>answers</th><th>empty (the row could not answer)</th>"
                 "<th>mean new tokens</th><th>mean seconds</th></tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")
    return parts


# ---- the gallery of examples ---------------------------------------------------------------------------
def pick_examples(answers: list[dict], n: int, seed: int = 0) -> list[str]:
    """``n`` question ids spread over question types and context levels: round-robin over the
    (question_type, context_level) groups, each in a seeded hash order. Deterministic."""
    first: dict[str, dict] = {}
    for a in answers:
        first.setdefault(a["qa_id"], a)
    groups: dict[tuple, list[str]] = {}
    for qa_id, a in first.items():
        groups.setdefault((level_sort_key("question_type", a["question_type"]), level_sort_key("context_level", a["context_level"])), []).append(qa_id)
    order = [sorted(ids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest()) for _, ids in sorted(groups.items())]
    out: list[str] = []
    k = 0
    while len(out) < n and any(k < len(ids) for ids in order):
        for ids in order:
            if k < len(ids) and len(out) < n:
                out.append(ids[k])
        k += 1
    return out


def _thumbnail(path: str | os.PathLike | None, size: int = 220) -> str | None:
    """A PNG data URI of the image at ``path``, at most ``size`` px a side; None when it cannot be read."""
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy()
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except Exception:  # a missing or unreadable image shows as a placeholder, never a broken <img>
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_REASON_KEYS = ("justification", "reason", "reasons", "explanation", "error")
_LIST_KEYS = ("matched", "missed", "hallucinated", "types")


def _short(value: Any, limit: int = 400) -> str:
    text = value if isinstance(value, str) else ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _score_text(metric: str, score: float) -> str:
    if metric in DEFECT_METRICS:
        return "✓ correct" if score == 1 else "✗ wrong"
    return fmt(metric, score)


def _verdict(j: dict) -> str:
    """One LLM-judge verdict: the score and the judge's reasons (claim, lists, justification)."""
    metric = j["metric"]
    d = parse_detail(j.get("detail"))
    bits = []
    for key in ("claim", "claims_defect"):
        if key in d:
            v = d[key]
            bits.append(f"claim: {'defect' if v in (True, 1) else 'no defect' if v in (False, 0) else 'unreadable'}")
            break
    for key in _LIST_KEYS:
        if d.get(key):
            bits.append(f"{key}: {_esc(_short(d[key]))}")
    for key in _REASON_KEYS:
        if d.get(key):
            bits.append(f"<i>{_esc(_short(d[key]))}</i>")
            break
    if d.get("suspicious"):
        bits.append("<b>flagged suspicious</b>")
    reasons = " · ".join(bits)
    if not j.get("ok") or j.get("score") is None:
        return f"<li class=fail><code>{_esc(metric)}</code> failed{': ' + reasons if reasons else ''}</li>"
    return f"<li><code>{_esc(metric)}</code> <span class=score>{_score_text(metric, j['score'])}</span>{' — ' + reasons if reasons else ''}</li>"


def _proxy_line(js: list[dict]) -> str:
    """Every offline proxy of one answer on one line."""
    bits = []
    for j in js:
        name = _esc(j["metric"].removeprefix("proxy_"))
        if not j.get("ok") or j.get("score") is None:
            why = parse_detail(j.get("detail")).get("error") or ""
            bits.append(f"<span class=fail-inline title='{_esc(why)}'>{name} failed</span>")
        else:
            bits.append(f"{name} <span class=score>{_score_text(j['metric'], j['score'])}</span>")
    return f"<li class=proxies><span class='tag proxy'>offline proxy</span> {' · '.join(bits)}</li>"


def _gallery_section(summary: dict, answers: list[dict], judgments: list[dict], examples: int, images: Mapping | None,
                     colours: dict[str, str]) -> list[str]:
    total = summary["n_questions"]
    chosen = pick_examples(answers, examples, summary.get("seed", 0))
    parts = ["<h2 id=examples>Examples</h2>"]
    if not chosen:
        parts.append("<p class=meta>No examples shown (examples = 0 or no answers).</p>")
        return parts
    spread = "spread over question types and context levels"
    parts.append(f"<p class=note>Showing {len(chosen)} of {total} questions ({spread}; seed {summary.get('seed', 0)}).</p>"
                 if len(chosen) < total else f"<p class=meta>All {total} questions are shown.</p>")
    by_q: dict[str, dict[str, dict]] = {}
    for a in answers:
        by_q.setdefault(a["qa_id"], {})[a["row"]] = a
    verdicts: dict[tuple[str, str], list[dict]] = {}
    for j in judgments:
        verdicts.setdefault((j["qa_id"], j["row"]), []).append(j)
    for k, qa_id in enumerate(chosen, 1):
        rows = by_q[qa_id]
        a = next(iter(rows.values()))
        src = _thumbnail((images or {}).get(a["image_sha"])) if images else None
        img = (f"<img src=\"{src}\" alt=\"panel {_esc(a['panel_id'])}\">" if src else
               f"<div class=noimg>image {_esc(a['image_sha'][:12])}<br>(not available)</div>")
        ctypes = ", ".join(a.get("context_types") or []) or "no context types"
        gold = (f"defect present ({_esc(', '.join(a.get('defect_types') or []) or 'type not given')})" if a["defect_present"] else "no defect")
        feats = _esc(", ".join(a.get("features") or []) or "none listed")
        parts.append(
            f"<article class=ex id='ex-{k}'><div class=exhead>{img}<div>"
            f"<p class=meta>#{k} · <code>{_esc(qa_id)}</code> · {_esc(a['question_type'])} · {_esc(a['complexity'])} · context "
            f"{_esc(a['context_level'])} ({_esc(ctypes)}) · panel <code>{_esc(a['panel_id'])}</code></p>"
            f"<p class=q>{_esc(a['question'])}</p>"
            f"<p class=ref><b>Reference:</b> {_esc(a['reference'])}</p>"
            f"<p class=meta>Gold features: {feats} · {gold}</p></div></div>"
            "<table class=answers><thead><tr><th>row</th><th>answer</th><th>the judge's verdicts</th></tr></thead><tbody>")
        for row in sorted(rows, key=row_sort_key):
            ans = rows[row].get("answer") or ""
            text = f"<div class=answer>{_esc(ans)}</div>" if ans.strip() else "<div class='answer none'>(no answer)</div>"
            js = sorted(verdicts.get((qa_id, row), []), key=lambda j: metric_sort_key(j["metric"]))
            proxies = [j for j in js if metric_kind(j["metric"]) == "proxy"]
            items = "".join(_verdict(j) for j in js if metric_kind(j["metric"]) != "proxy") + (_proxy_line(proxies) if proxies else "")
            items = items or "<li class=meta>not judged</li>"
            parts.append(f"<tr><td class=rn>{_swatch(colours.get(row, '#999'))}{_esc(row)}</td><td>{text}</td><td><ul class=verdicts>{items}</ul></td></tr>")
        parts.append("</tbody></table></article>")
    return parts


# ---- Markdown -------------------------------------------------------------------------------------------
def _md(text: Any) -> str:
    """Text for a Markdown cell: no raw HTML tag can form, no column break."""
    text = "" if text is None else str(text)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def _md_value(metric: str, c: dict | None, stat: str = "mean") -> str:
    if c is None or c.get(stat) is None:
        return "–"
    prefix = "" if stat == "mean" else f"{stat}_"
    return f"{fmt(metric, c[stat], stat)} {_ci_text(metric, c.get(prefix + 'lo'), c.get(prefix + 'hi'), stat)}".strip()


def _markdown(summary: dict, paper: dict | None, html_name: str) -> str:
    rows, cells = summary["rows"], summary["cells"]
    llm = _llm_metrics(summary)
    out = ["# GlassLLaVA evaluation", "",
           f"{summary['n_questions']} questions about {summary['n_images']} images; rows: {', '.join(f'`{_md(r)}`' for r in rows)}. "
           f"95 % intervals: bootstrap over images ({summary['bootstrap']} resamples, seed {summary['seed']}). Full report: [{html_name}]({html_name}).", ""]
    if not llm:
        out += ["> **No LLM judge ran: every number is an offline proxy** (`proxy_*`), not comparable with the paper's GPT-4-judged numbers.", ""]
    else:
        out += ["> LLM-judge metrics: " + ", ".join(f"`{m}`" for m in llm) + ". Metrics named `proxy_*` are offline proxies "
                "(scores against the reference text), not the judge's.", ""]
    if paper:
        out += ["## Against the paper", "", f"Paper: {_md(paper.get('citation'))}. {_md(paper.get('caveat'))}", ""]
        pq = paper.get("quality") or {}
        out += ["| quality (0-100) | judge | simple | complex |", "|---|---|---|---|",
                f"| paper | GPT-4 | {pq.get('simple', '–')} | {pq.get('complex', '–')} |"]
        for metric, scale, judge in (("quality", 1.0, "LLM judge"), ("proxy_rouge_l", 100.0, "offline proxy: 100 × ROUGE-L")):
            for row in rows:
                m = cells.get(row, {}).get(metric)
                if m is None:
                    continue
                vals = []
                for lv in ("simple", "complex"):
                    c = m["complexity"].get(lv)
                    if c is None or c["mean"] is None:
                        vals.append("–")
                    else:
                        ci = "" if c["lo"] is None else f" [{c['lo'] * scale:.1f}–{c['hi'] * scale:.1f}]"
                        vals.append(f"{c['mean'] * scale:.1f}{ci}")
                out.append(f"| `{_md(row)}` | {judge} | {vals[0]} | {vals[1]} |")
        out.append("")
        pd = paper.get("defect_accuracy") or {}
        defect = [m for m in DEFECT_METRICS if any(m in cells.get(r, {}) for r in rows)]
        if defect:
            out += ["| defect accuracy | judge | " + " | ".join(CONTEXT_LEVELS) + " |", "|---|---|" + "---|" * len(CONTEXT_LEVELS),
                    "| paper | GPT-4 | " + " | ".join(f"{100 * pd[lv]:.0f}%" if lv in pd else "–" for lv in CONTEXT_LEVELS) + " |"]
            for metric in defect:
                for row in rows:
                    m = cells.get(row, {}).get(metric)
                    if m is None:
                        continue
                    judge = "LLM judge" if metric == "defect" else "offline proxy"
                    out.append(f"| `{_md(row)}` | {judge} (`{metric}`) | " + " | ".join(_md_value(metric, m["context_level"].get(lv))
                                                                                         for lv in CONTEXT_LEVELS) + " |")
            out.append("")
    out += ["## All rows side by side", "", "| metric | kind | " + " | ".join(f"`{_md(r)}`" for r in rows) + " |",
            "|---|---|" + "---|" * len(rows)]
    for metric in summary["metrics"]:
        kind = {"llm": "LLM judge", "proxy": "offline proxy", "truth": "ground truth"}[metric_kind(metric)]
        vals = [_md_value(metric, cells.get(r, {}).get(metric, {}).get("all")) for r in rows]
        out.append(f"| `{_md(metric)}` | {kind} | " + " | ".join(vals) + " |")
    out.append("")
    if MODEL_ROW in rows:
        real = []
        for metric in summary["metrics"]:
            for row in rows:
                if row == MODEL_ROW:
                    continue
                cmp = comparison(summary, MODEL_ROW, row, metric)
                if cmp and cmp["different"]:
                    real.append(f"- `{metric}`: `{MODEL_ROW}` {fmt(metric, cmp['a']['value'])} vs `{_md(row)}` {fmt(metric, cmp['b']['value'])} "
                                f"(`{_md(cmp['better'])}` better; intervals do not overlap)")
        out += ["## Differences called real", "", "A difference is called real only where the two 95 % intervals do not overlap.", ""]
        out += real or ["- none: every interval of `model` overlaps every other row's."]
        out.append("")
    out += ["## Judge failures", "", "| metric | " + " | ".join(f"`{_md(r)}`" for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for metric in summary["metrics"]:
        vals = []
        for r in rows:
            c = cells.get(r, {}).get(metric, {}).get("all")
            vals.append("–" if c is None else f"{c['failures']} of {c['n'] + c['failures']}")
        out.append(f"| `{_md(metric)}` | " + " | ".join(vals) + " |")
    out.append("")
    return "\n".join(out)


# ---- the public entry point ------------------------------------------------------------------------------
def write_report(summary: dict, answers: Any, judgments: Any, out_dir: str | os.PathLike, *,
                 paper_reference: dict | None = PAPER_REFERENCE, examples: int = 24, images: Mapping[str, str | os.PathLike] | None = None,
                 name: str = "eval", title: str = "GlassLLaVA evaluation") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.html`` (self-contained: inline CSS and SVG, thumbnails as data URIs, no script)
    and ``<out_dir>/<name>.md``, atomically; returns their paths.

    ``summary`` from ``eval_metrics.summarise`` on the same ``answers`` and ``judgments`` (tables or lists of
    dicts); ``paper_reference`` the paper's numbers (None: no paper columns); ``examples`` questions in the
    gallery; ``images`` maps image_sha → image file for the gallery's thumbnails (missing ones show a
    placeholder)."""
    out_dir = Path(out_dir)
    answer_rows, judgment_rows = records(answers), records(judgments)
    rows = summary["rows"]
    colours = _colours(rows)
    html_path, md_path = out_dir / f"{name}.html", out_dir / f"{name}.md"
    parts = [_head(f"{title}: {summary['n_questions']} questions, {len(rows)} rows"),
             f"<h1>{_esc(title)}</h1>",
             f"<p class=meta>{summary['n_questions']} questions about {summary['n_images']} images · rows: "
             + ", ".join(f"{_swatch(colours[r])}<code>{_esc(r)}</code>" for r in rows)
             + f" · 95 % intervals: bootstrap over images, {summary['bootstrap']} resamples, seed {summary['seed']}</p>",
             _judge_note(summary),
             "<nav class=toc>" + "".join(f"<a href='#{i}'>{t}</a>" for i, t in (
                 ("paper", "Against the paper"), ("rows", "All rows"), ("differences", "Real differences"),
                 ("breakdown", "By context and type"), ("defect", "Defect P/R/F1"), ("failures", "Judge failures"),
                 ("examples", "Examples")) if i != "paper" or paper_reference) + "</nav>"]
    if paper_reference:
        parts += _paper_section(summary, paper_reference, colours)
    parts += _rows_section(summary, colours)
    parts += _breakdown_section(summary, colours)
    parts += _defect_section(summary, colours)
    parts += _failures_section(summary, answer_rows, colours)
    parts += _gallery_section(summary, answer_rows, judgment_rows, examples, images, colours)
    parts.append("</main></body></html>")
    atomic_write_text(html_path, "\n".join(parts) + "\n")
    atomic_write_text(md_path, _markdown(summary, paper_reference, html_path.name))
    return html_path, md_path
