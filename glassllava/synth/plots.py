"""Vector plots (XRD patterns, DSC curves) and tables drawn straight onto a reportlab canvas.

Everything is drawn as paths and text inside a given box (top-left origin, PDF points), except
a tick label centred on the last tick, which may stick out past the box's right side:
``draw_plot`` returns the box of what it drew, and the ground truth uses that. Data come from the sample histories.
"""

from __future__ import annotations

import math

import numpy as np
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from glassllava.synth.micrographs import history_tendencies

_CRYSTAL_PHENOMENA = ("surface_crystallisation", "bulk_crystallisation", "dendrites")


def is_crystallised(history: dict) -> bool:
    """Whether XRD should show Bragg peaks: the same causal rule the micrographs use, taken as certain."""
    odds = history_tendencies(history)
    return any(odds.get(p, 0) >= 0.5 for p in _CRYSTAL_PHENOMENA)


def xrd_data(samples: list[dict], rng: np.random.Generator) -> dict:
    two_theta = np.linspace(10, 60, 500)
    series = []
    for h in samples:
        halo = 1.0 * np.exp(-0.5 * ((two_theta - rng.uniform(22, 25)) / 4.5) ** 2)
        y = halo + 0.05 * rng.standard_normal(two_theta.size) * 0.4
        cryst = is_crystallised(h)
        if cryst:
            for pos, amp in _family_peaks(h):
                y += 2.2 * amp * np.exp(-0.5 * ((two_theta - pos) / 0.18) ** 2)
        series.append(
            {
                "sample": h["sample_id"],
                "crystalline": cryst,
                "phase": h["properties"]["crystal"] if cryst else None,
                "y": y,
            }
        )
    return {
        "kind": "xrd",
        "x": two_theta,
        "series": series,
        "xlabel": "2 theta (degrees)",
        "ylabel": "Intensity (a.u.)",
    }


def _family_peaks(h: dict):
    from glassllava.synth.history import FAMILIES

    return FAMILIES[h["family"]]["peaks"]


def dsc_data(samples: list[dict], rng: np.random.Generator) -> dict:
    h = samples[0]
    props = h["properties"]
    t = np.linspace(props["Tg_C"] - 200, props["Tm_C"] + 60, 500)
    series = []
    for k, rate in enumerate(
        sorted(rng.choice([5, 10, 15, 20], size=int(rng.integers(1, 4)), replace=False))
    ):
        shift = 8 * math.log(rate / 10) if rate != 10 else 0.0
        tg, tx = props["Tg_C"] + shift * 0.5, props["Tx_C"] + shift * 2
        y = 0.002 * (t - t[0]) * 0.1 - 0.25 / (
            1 + np.exp(-(t - tg) / 6)
        )  # baseline and endothermic step at Tg
        y += 1.2 * np.exp(
            -0.5 * ((t - tx) / 12) ** 2
        )  # exothermic crystallisation peak
        y -= 0.8 * np.exp(-0.5 * ((t - props["Tm_C"]) / 10) ** 2)  # melting endotherm
        y += 0.01 * rng.standard_normal(t.size)
        series.append(
            {"sample": f"{rate} K/min", "Tg_C": round(tg), "Tx_C": round(tx), "y": y}
        )
    return {
        "kind": "dsc",
        "x": t,
        "series": series,
        "xlabel": "Temperature (°C)",
        "ylabel": "Heat flow, exo up (a.u.)",
    }


def plot_truth(data: dict) -> dict:
    """The JSON part of plot data (no arrays)."""
    return {
        "kind": data["kind"],
        "series": [{k: v for k, v in s.items() if k != "y"} for s in data["series"]],
    }


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (m * step) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def draw_plot(
    c: Canvas,
    data: dict,
    box: tuple[float, float, float, float],
    page_h: float,
    font: str,
    label: str | None,
) -> tuple[float, float, float, float]:
    """Draw axes, ticks, labels and curves inside ``box`` = (x0, top, x1, bottom).

    Returns the box of what was drawn: ``box`` widened by a tick label centred on the last
    tick, which may stick out past the frame's right end by half its width."""
    x0, top, x1, bottom = box
    fs = max(6.0, min(8.0, (x1 - x0) / 28))
    # frame: leave room for the y label (rotated) and tick labels on the left, x label at the bottom
    fx0, fx1 = x0 + 2.6 * fs + 4, x1 - 2
    ft, fb = top + 2, bottom - 2.6 * fs - 2
    Y = lambda y: page_h - y
    c.saveState()
    c.setLineWidth(0.6)
    c.setStrokeColorRGB(0, 0, 0)
    c.rect(fx0, Y(fb), fx1 - fx0, fb - ft)
    xs = data["x"]
    xlo, xhi = float(xs[0]), float(xs[-1])
    ys_all = [s["y"] + k * _offset(data) for k, s in enumerate(data["series"])]
    ylo = min(float(y.min()) for y in ys_all)
    yhi = max(float(y.max()) for y in ys_all)
    pad = 0.08 * (yhi - ylo)
    ylo, yhi = ylo - pad, yhi + pad * 2.5
    px = lambda v: fx0 + (v - xlo) / (xhi - xlo) * (fx1 - fx0)
    py = lambda v: fb - (v - ylo) / (yhi - ylo) * (fb - ft)
    c.setFont(font, fs)
    ink_x0, ink_x1 = x0, x1
    for tv in _nice_ticks(xlo, xhi):
        if xlo <= tv <= xhi:
            c.line(px(tv), Y(fb), px(tv), Y(fb - 3))
            lab = f"{tv:g}"
            lw = stringWidth(lab, font, fs)
            c.drawString(px(tv) - lw / 2, Y(fb + fs + 1), lab)
            ink_x0, ink_x1 = min(ink_x0, px(tv) - lw / 2), max(ink_x1, px(tv) + lw / 2)
    c.drawCentredString((fx0 + fx1) / 2, Y(bottom - 0.25 * fs), data["xlabel"])
    c.saveState()
    c.translate(x0 + fs * 0.8, Y((ft + fb) / 2))
    c.rotate(90)
    c.drawCentredString(0, 0, data["ylabel"])
    c.restoreState()
    for k in range(1, 5):  # unlabelled y ticks, as usual for arbitrary units
        yy = ft + k * (fb - ft) / 5
        c.line(fx0, Y(yy), fx0 + 3, Y(yy))
    shades = [
        (0, 0, 0),
        (0.75, 0.1, 0.1),
        (0.1, 0.3, 0.75),
        (0.1, 0.55, 0.2),
        (0.5, 0.3, 0.6),
    ]
    for k, (s, ys) in enumerate(zip(data["series"], ys_all)):
        c.setStrokeColorRGB(*shades[k % len(shades)])
        path = c.beginPath()
        path.moveTo(px(xs[0]), Y(py(ys[0])))
        for xv, yv in zip(xs[1::2], ys[1::2]):
            path.lineTo(px(xv), Y(py(yv)))
        c.drawPath(path, stroke=1, fill=0)
        c.setFillColorRGB(*shades[k % len(shades)])
        c.setFont(font, fs * 0.9)
        c.drawRightString(fx1 - 3, Y(py(ys[-1]) - 2), s["sample"])
        if data["kind"] == "dsc" and k == 0:
            c.setFillColorRGB(0, 0, 0)
            c.drawString(
                px(s["Tg_C"]) + 2,
                Y(py(float(np.interp(s["Tg_C"], xs, ys))) + fs + 2),
                "Tg",
            )
            c.drawString(px(s["Tx_C"]) + 4, Y(py(float(ys.max()))), "Tx")
    c.setFillColorRGB(0, 0, 0)
    if label:
        c.setFont(font, fs + 1)
        c.drawString(fx0 + 3, Y(ft + fs + 3), f"({label})")
    c.restoreState()
    return (ink_x0, top, ink_x1, bottom)


def _offset(data: dict) -> float:
    return 0.8 if data["kind"] == "xrd" else 0.6


def table_rows(samples: list[dict]) -> tuple[list[str], list[list[str]]]:
    comp = samples[0]["composition"]
    oxides = list(comp)
    header = ["Glass"] + oxides + ["Tg (°C)", "Tx (°C)"]
    props = samples[0]["properties"]
    rows = [
        ["nominal"]
        + [f"{comp[o]:.1f}" for o in oxides]
        + [str(props["Tg_C"]), str(props["Tx_C"])]
    ]
    rows.append(
        ["analysed"]
        + [
            f"{comp[o] * (1 + 0.01 * ((i * 7) % 5 - 2)):.1f}"
            for i, o in enumerate(oxides)
        ]
        + ["", ""]
    )
    return header, rows


def table_height(n_rows: int, fs: float) -> float:
    return (n_rows + 1) * fs * 1.5 + 6


def draw_table(
    c: Canvas,
    header: list[str],
    rows: list[list[str]],
    box,
    page_h: float,
    font: str,
    bold: str,
    fs: float,
) -> None:
    x0, top, x1, _ = box
    Y = lambda y: page_h - y
    c.setLineWidth(0.7)
    c.line(x0, Y(top), x1, Y(top))
    # column widths follow their widest entry, spread to fill the table width
    need = [
        max(stringWidth(r[k], font, fs) for r in [header] + rows) + 4
        for k in range(len(header))
    ]
    need = [max(n, stringWidth(header[k], bold, fs) + 4) for k, n in enumerate(need)]
    scale = (x1 - x0) / sum(need)
    lefts = [x0 + sum(need[:k]) * scale for k in range(len(header))]
    pitch = fs * 1.5  # row pitch stays as measured by table_height
    if scale < 1:  # too narrow: shrink the type instead of overlapping columns
        fs *= scale
    y = top + 2
    c.setFont(bold, fs)
    for k, h in enumerate(header):
        c.drawString(lefts[k] + 1, Y(y + fs), h)
    y += pitch
    c.setLineWidth(0.4)
    c.line(x0, Y(y), x1, Y(y))
    c.setFont(font, fs)
    for row in rows:
        for k, v in enumerate(row):
            c.drawString(lefts[k] + 1, Y(y + fs + 1), v)
        y += pitch
    c.setLineWidth(0.7)
    c.line(x0, Y(y + 4), x1, Y(y + 4))
