"""Procedural secondary-electron (SE) micrographs of glass, with the truth of every feature drawn.

Consumes a processing history (what was done to a glass sample) or a ``MicrographSpec``;
produces a greyscale ``PIL.Image`` (image area + black data bar) and a truth dict.

The picture is built from two fields: a height map ``z`` (topography, in pixels) and a yield
map ``m`` (material contrast), plus a ``cavity`` map (holes and crack openings trap electrons).
The SE signal then gets tilt contrast from |grad z| (bright rims on pores and crack edges),
a directional term (the detector sits on one side), beam blur, Poisson + Gaussian noise and,
sometimes, horizontal charging streaks.

Defect rule (``DEFECT_TYPES``): cracks, pores, bubbles, unmolten grains, crystalline inclusions,
any crystals (surface, bulk, dendrites), leached/corroded layers and scratches are defects.
Phase separation is a microstructure, fracture markings (mirror, mist, hackle) are the normal
record of a fracture, and clean glass is clean: none of these is a defect.

All randomness comes from the ``numpy.random.Generator`` passed in, so a seed gives the same pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

WIDTH, HEIGHT, BAR_HEIGHT = (
    512,
    400,
    40,
)  # image area is WIDTH x HEIGHT, the data bar sits below it
DISPLAY_WIDTH_UM = (
    127_000.0  # magnification is quoted for a 127 mm wide display: HFW = 127 mm / Mag
)

PHENOMENA = (
    "clean_glass",
    "cracks",
    "crack_network",
    "pores",
    "bubbles",
    "unmolten_grains",
    "crystalline_inclusions",
    "surface_crystallisation",
    "bulk_crystallisation",
    "dendrites",
    "phase_separation_droplet",
    "phase_separation_interconnected",
    "leached_layer",
    "scratches",
    "fracture_surface",
)
# feature types a phenomenon can put in the truth
FEATURE_TYPES = (
    "clean_glass",
    "crack",
    "crack_network",
    "pore",
    "bubble",
    "unmolten_grain",
    "crystalline_inclusion",
    "surface_crystal_layer",
    "bulk_crystal",
    "dendrite",
    "phase_separation_droplet",
    "phase_separation_interconnected",
    "leached_layer",
    "scratch",
    "fracture_origin",
    "fracture_mirror",
    "fracture_mist",
    "fracture_hackle",
)
DEFECT_TYPES = frozenset(
    {
        "crack",
        "crack_network",
        "pore",
        "bubble",
        "unmolten_grain",
        "crystalline_inclusion",
        "surface_crystal_layer",
        "bulk_crystal",
        "dendrite",
        "leached_layer",
        "scratch",
    }
)
# the order phenomena are drawn in: backgrounds first, things that cut through everything last
_DRAW_ORDER = (
    "fracture_surface",
    "leached_layer",
    "clean_glass",
    "phase_separation_droplet",
    "phase_separation_interconnected",
    "surface_crystallisation",
    "bulk_crystallisation",
    "dendrites",
    "unmolten_grains",
    "crystalline_inclusions",
    "bubbles",
    "pores",
    "crack_network",
    "cracks",
    "scratches",
)
_NICE_MAGS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
_NICE_BARS_UM = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class MicrographSpec:
    """What to draw and how the microscope was set. ``params`` holds physical sizes in µm."""

    phenomena: tuple[str, ...]
    magnification: float
    kv: float = 15.0
    wd_mm: float = 10.0
    detector: str = "ETD"
    bar_style: str = "fei"  # "fei" | "zeiss"
    params: dict = field(default_factory=dict)
    charging: bool = False
    dose: float = 40.0  # electrons per pixel at unit yield: lower is noisier

    def __post_init__(self) -> None:
        unknown = [p for p in self.phenomena if p not in PHENOMENA]
        if unknown:
            raise ValueError(f"unknown phenomena {unknown}; allowed: {PHENOMENA}")


def hfw_um(magnification: float) -> float:
    return DISPLAY_WIDTH_UM / magnification


def nice_magnification(target: float) -> float:
    """Round a magnification to the 1-1.2-1.5-2-2.5-3-4-5-6-8 series microscopes offer."""
    k = math.floor(math.log10(target))
    return min(
        (n * 10**k for n in _NICE_MAGS + (10.0,)),
        key=lambda v: abs(math.log(v / target)),
    )


def is_defect(feature_type: str) -> bool:
    return feature_type in DEFECT_TYPES


# --------------------------------------------------------------------------- spec from history


def spec_from_history(
    history: dict, rng: np.random.Generator, focus: str | None = None
) -> MicrographSpec:
    """Draw the micrograph a sample with this processing history would plausibly give.

    The rules are causal and stated in ``history_tendencies``; ``focus`` forces one phenomenon
    (the one a paper's figure is about) when the history allows it.
    """
    odds = history_tendencies(history)
    chosen = [p for p, prob in odds.items() if rng.random() < prob]
    if focus and focus in odds and focus not in chosen:
        chosen.insert(0, focus)
    chosen = _compatible(chosen, rng)
    if not chosen:
        chosen = ["clean_glass"]
    params = _physical_params(history, chosen, rng)
    primary = focus if focus in chosen else chosen[0]
    mag = nice_magnification(_target_magnification(primary, params, rng))
    kv = float(rng.choice([5.0, 10.0, 15.0, 20.0] if mag < 20_000 else [2.0, 3.0, 5.0]))
    bar_style = str(rng.choice(["fei", "zeiss"]))
    detector = {"fei": ["ETD", "ETD", "TLD"], "zeiss": ["SE2", "InLens"]}[bar_style]
    return MicrographSpec(
        phenomena=tuple(chosen),
        magnification=mag,
        kv=kv,
        wd_mm=round(float(rng.uniform(4.5, 15.0)), 1),
        detector=str(rng.choice(detector)),
        bar_style=bar_style,
        params=params,
        charging=bool(rng.random() < (0.35 if kv >= 15 else 0.12)),
        dose=float(rng.uniform(25, 90)),
    )


def history_tendencies(history: dict) -> dict[str, float]:
    """Probability of each phenomenon given the processing history (the causal rules of the corpus).

    - rapid quench without annealing -> cracks (a water quench gives a crack network);
    - heat treatment near the crystallisation temperature Tx for hours -> crystals
      (below Tx surface crystallisation, above Tx + 20 dendrites, lithium disilicate bulk);
    - corrosion test -> leached surface layer;
    - high melting temperature and a short melt -> gas bubbles; low temperature or short melt -> unmolten grains;
    - borosilicate heat treated inside the miscibility gap -> phase separation
      (interconnected near the critical composition, B2O3 >= 20 mol%, droplets otherwise);
    - fractured surfaces show mirror, mist and hackle; polished surfaces sometimes keep scratches.
    """
    fam = history["family"]
    melt, quench = history["melting"], history["quench"]
    anneal, ht = history.get("anneal"), history.get("heat_treatment")
    surface = history.get("surface", "polished")
    props = history["properties"]
    odds: dict[str, float] = {}
    if quench["rate"] == "rapid" and not anneal:
        odds["crack_network" if quench["method"] == "water" else "cracks"] = 0.85
    elif quench["rate"] == "rapid":
        odds["cracks"] = 0.08
    if melt["temperature_C"] >= props["melt_hi_C"] and melt["time_h"] <= 1.5:
        odds["bubbles"] = 0.8
    elif melt["time_h"] <= 1.0:
        odds["pores"] = 0.4
    if melt["temperature_C"] <= props["melt_lo_C"] or melt["time_h"] < 1.0:
        odds["unmolten_grains"] = 0.8
        odds["crystalline_inclusions"] = 0.3
    if ht:
        t, hours, tx = ht["temperature_C"], ht["time_h"], props["Tx_C"]
        if tx - 80 <= t and hours >= 2:
            if fam == "lithium disilicate":
                odds["bulk_crystallisation"] = 0.9
            elif t > tx + 20:
                odds["dendrites"] = 0.85
            elif t < tx - 20:
                odds["surface_crystallisation"] = 0.85
            else:
                odds["bulk_crystallisation"] = 0.85
        gap = props.get("miscibility_gap_C")
        if gap and gap[0] <= t <= gap[1] and hours >= 1:
            boron = history["composition"].get("B2O3", 0.0)
            odds[
                "phase_separation_interconnected"
                if boron >= 20
                else "phase_separation_droplet"
            ] = 0.95
    if history.get("corrosion"):
        odds["leached_layer"] = 0.95
    if surface == "fractured":
        odds["fracture_surface"] = 1.0
    elif surface == "polished" and not history.get("corrosion"):
        odds["scratches"] = 0.3
    return odds


def _compatible(chosen: list[str], rng: np.random.Generator) -> list[str]:
    """Drop combinations that cannot share one field of view, keep at most three phenomena."""
    out: list[str] = []
    exclusive = [
        {"phase_separation_droplet", "phase_separation_interconnected"},
        {"crack_network", "cracks"},
        {"leached_layer", "fracture_surface"},
        {"surface_crystallisation", "fracture_surface"},
        {"leached_layer", "surface_crystallisation"},
    ]
    # a separated glass that also crystallised or corroded would need two length scales in one field
    separated = {"phase_separation_droplet", "phase_separation_interconnected"}
    for other in (
        "surface_crystallisation",
        "bulk_crystallisation",
        "dendrites",
        "leached_layer",
    ):
        exclusive += [{s, other} for s in separated]
    for p in chosen:
        if any(p in group and out_p in group for group in exclusive for out_p in out):
            continue
        out.append(p)
    return out[:3]


def _physical_params(
    history: dict, chosen: list[str], rng: np.random.Generator
) -> dict:
    params: dict = {}
    ht = history.get("heat_treatment") or {}
    if any(p.startswith("phase_separation") for p in chosen):
        # coarsening goes as t^(1/3) (Lifshitz-Slyozov); 0.1 µm after about 1 h
        params["phase_size_um"] = round(
            0.1
            * max(ht.get("time_h", 1.0), 0.5) ** (1 / 3)
            * float(rng.uniform(0.8, 1.25)),
            3,
        )
    if "leached_layer" in chosen:
        c = history["corrosion"]
        rate = {"acid": 1.2, "water": 0.5, "alkaline": 0.8}[c["kind"]]
        params["layer_um"] = round(
            rate * math.sqrt(c["time_d"]) * float(rng.uniform(0.8, 1.2)), 2
        )
    if "surface_crystallisation" in chosen:
        params["layer_um"] = round(
            2.0 * math.sqrt(ht.get("time_h", 4)) * float(rng.uniform(0.7, 1.3)), 1
        )
    return params


def _target_magnification(
    primary: str, params: dict, rng: np.random.Generator
) -> float:
    if primary.startswith("phase_separation"):
        px_um = params["phase_size_um"] / rng.uniform(10, 22)  # a domain spans 10-22 px
        return DISPLAY_WIDTH_UM / (px_um * WIDTH)
    if primary in ("leached_layer", "surface_crystallisation"):
        px_um = params["layer_um"] / rng.uniform(60, 150)
        return DISPLAY_WIDTH_UM / (px_um * WIDTH)
    lo, hi = {
        "cracks": (150, 1500),
        "crack_network": (60, 400),
        "pores": (500, 3000),
        "bubbles": (80, 500),
        "unmolten_grains": (150, 1000),
        "crystalline_inclusions": (500, 3000),
        "bulk_crystallisation": (300, 3000),
        "dendrites": (200, 1500),
        "scratches": (1000, 8000),
        "fracture_surface": (50, 300),
        "clean_glass": (1000, 20000),
    }[primary]
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


# --------------------------------------------------------------------------- rendering


class _Scene:
    """The fields a micrograph is drawn into, and the features recorded so far."""

    def __init__(self, rng: np.random.Generator, pixel_um: float, params: dict) -> None:
        self.rng = rng
        self.pixel_um = pixel_um
        self.params = params
        self.z = np.zeros((HEIGHT, WIDTH))
        self.m = np.ones((HEIGHT, WIDTH))
        self.cavity = np.zeros((HEIGHT, WIDTH))
        self.features: list[dict] = []
        self.yy, self.xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(float)

    def params_px(self, key: str, default_px: float) -> float:
        """A physical size from the spec in pixels, or a default pixel size when the spec has none."""
        return self.params[key] / self.pixel_um if key in self.params else default_px

    def add(self, ftype: str, box, size_um: float | None = None, **extra) -> None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)  # noqa: RUF046  (numpy scalars: keep plain ints for JSON)
        x0, x1 = max(0, min(x0, WIDTH - 1)), max(1, min(x1, WIDTH))
        y0, y1 = max(0, min(y0, HEIGHT - 1)), max(1, min(y1, HEIGHT))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        feat = {"type": ftype, "box": [x0, y0, x1, y1], "defect": is_defect(ftype)}
        if size_um is not None:
            feat["size_um"] = round(float(size_um), 3)
        feat.update(extra)
        self.features.append(feat)

    def add_mask(
        self, ftype: str, mask: np.ndarray, size_um: float | None = None, **extra
    ) -> None:
        ys, xs = np.nonzero(mask)
        if len(xs):
            self.add(
                ftype,
                (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1),
                size_um,
                **extra,
            )


def _noise(rng: np.random.Generator, sigma: float, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    """Smooth Gaussian random field with unit std and correlation length ``sigma`` px (cheap for big sigma)."""
    if sigma > 4:
        f = max(1, int(sigma // 2))
        small = rng.standard_normal((shape[0] // f + 3, shape[1] // f + 3))
        small = ndimage.gaussian_filter(small, sigma / f, mode="wrap").astype(
            np.float32
        )
        big = Image.fromarray(small, mode="F").resize(
            (small.shape[1] * f, small.shape[0] * f), Image.BILINEAR
        )
        field_ = np.asarray(big, dtype=float)[: shape[0], : shape[1]]
    else:
        field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field_ - field_.mean()) / (field_.std() + 1e-9)


def _window(x: float, y: float, r: float) -> tuple[slice, slice]:
    """Rows and columns of the image within ``r`` of (x, y), so local shapes cost local work."""
    return (
        slice(int(max(0, y - r - 2)), int(min(HEIGHT, y + r + 3))),
        slice(int(max(0, x - r - 2)), int(min(WIDTH, x + r + 3))),
    )


def _polyline_mask(
    lines: list[list[tuple[float, float]]], widths: list[int]
) -> np.ndarray:
    img = Image.new("L", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(img)
    for pts, w in zip(lines, widths):
        if len(pts) > 1:
            draw.line(
                [(float(x), float(y)) for x, y in pts],
                fill=255,
                width=int(w),
                joint="curve",
            )
    return np.asarray(img, dtype=float) / 255.0


def _polygon_mask(polys: list[list[tuple[float, float]]]) -> np.ndarray:
    img = Image.new("L", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(img)
    for pts in polys:
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(img, dtype=float) / 255.0


def _walk(rng, x, y, angle, length, step=4.0, wiggle=0.18):
    pts = [(x, y)]
    for _ in range(int(length / step)):
        angle += rng.normal(0, wiggle)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        pts.append((x, y))
        if not (-20 < x < WIDTH + 20 and -20 < y < HEIGHT + 20):
            break
    return pts


def _cut(scene: _Scene, mask: np.ndarray, depth: float, darkness: float) -> None:
    """Carve a groove: lowered surface (bright tilted flanks) with a dark opening."""
    scene.z -= depth * ndimage.gaussian_filter(mask, 1.2)
    scene.cavity = np.maximum(scene.cavity, darkness * mask)


def _draw_clean_glass(s: _Scene) -> None:
    s.z += 0.6 * _noise(s.rng, 40)
    s.add("clean_glass", (0, 0, WIDTH, HEIGHT))


def _draw_cracks(s: _Scene, network: bool) -> None:
    rng = s.rng
    lines, widths = [], []
    if network:
        cx, cy = rng.uniform(0.3, 0.7) * WIDTH, rng.uniform(0.3, 0.7) * HEIGHT
        n = int(rng.integers(5, 10))
        for k in range(n):
            a = 2 * math.pi * k / n + rng.normal(0, 0.25)
            pts = _walk(rng, cx, cy, a, rng.uniform(150, 380), wiggle=0.12)
            lines.append(pts)
            widths.append(int(rng.integers(2, 4)))
            for px, py in pts[5::12]:
                if rng.random() < 0.5:
                    lines.append(
                        _walk(
                            rng,
                            px,
                            py,
                            a + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2),
                            rng.uniform(25, 90),
                        )
                    )
                    widths.append(1)
        for r in rng.uniform(
            50, 170, size=int(rng.integers(1, 3))
        ):  # ring cracks join the radial ones
            a0 = rng.uniform(0, 2 * math.pi)
            arc = [
                (
                    cx + (r + rng.normal(0, 3)) * math.cos(a0 + t),
                    cy + (r + rng.normal(0, 3)) * math.sin(a0 + t),
                )
                for t in np.linspace(0, rng.uniform(1.5, 4.5), 40)
            ]
            lines.append(arc)
            widths.append(2)
        mask = _polyline_mask(lines, widths)
        _cut(s, mask, 5.0, 0.85)
        s.add_mask(
            "crack_network",
            mask > 0.5,
            size_um=_extent_um(s, mask),
            n_cracks=len(lines),
        )
        return
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        a = rng.uniform(0, 2 * math.pi)
        main = _walk(rng, x, y, a, rng.uniform(150, 450), wiggle=0.1)
        crack = [main]
        if rng.random() < 0.6:
            bx, by = main[len(main) // 2]
            crack.append(
                _walk(rng, bx, by, a + rng.choice([-1, 1]) * 0.6, rng.uniform(40, 160))
            )
        mask = _polyline_mask(crack, [int(rng.integers(2, 4))] + [1] * (len(crack) - 1))
        _cut(s, mask, 4.5, 0.85)
        s.add_mask("crack", mask > 0.5, size_um=_extent_um(s, mask))


def _extent_um(s: _Scene, mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask > 0.5)
    return (
        float(math.hypot(xs.max() - xs.min(), ys.max() - ys.min()) * s.pixel_um)
        if len(xs)
        else 0.0
    )


def _place_circles(s: _Scene, n: int, rmin: float, rmax: float, margin: float = 2.0):
    circles: list[tuple[float, float, float]] = []
    for _ in range(n * 20):
        if len(circles) >= n:
            break
        r = float(np.exp(s.rng.uniform(math.log(rmin), math.log(rmax))))
        x, y = (
            s.rng.uniform(-0.3 * r, WIDTH + 0.3 * r),
            s.rng.uniform(-0.3 * r, HEIGHT + 0.3 * r),
        )
        if all(math.hypot(x - cx, y - cy) > r + cr + margin for cx, cy, cr in circles):
            circles.append((x, y, r))
    return circles


def _draw_cavities(s: _Scene, big: bool) -> None:
    """Pores (small, many) or gas bubbles (big, few) cut by the surface: dark holes with bright rims."""
    n, rmin, rmax = (
        (int(s.rng.integers(2, 7)), 14, 70)
        if big
        else (int(s.rng.integers(6, 30)), 3, 14)
    )
    for x, y, r in _place_circles(s, n, rmin, rmax, margin=4):
        w = _window(x, y, r)
        if s.xx[w].size == 0:
            continue
        d2 = ((s.xx[w] - x) ** 2 + (s.yy[w] - y) ** 2) / r**2
        inside = d2 < 1
        bowl = np.where(inside, np.sqrt(np.clip(1 - d2, 0, 1)), 0.0)
        s.z[w] -= 0.9 * r * bowl
        # the inner wall facing the detector catches some signal: a crescent of light inside
        lit = np.clip((s.xx[w] - x) / r, -1, 1)
        s.cavity[w] = np.maximum(
            s.cavity[w],
            inside * (0.75 - (0.35 if big else 0.15) * lit) * np.clip(bowl * 3, 0, 1),
        )
        s.add(
            "bubble" if big else "pore",
            (x - r, y - r, x + r, y + r),
            size_um=2 * r * s.pixel_um,
        )


def _irregular_polygon(rng, x, y, r, n, jitter):
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    return [
        (
            x + r * (1 + rng.uniform(-jitter, jitter)) * math.cos(a),
            y + r * (1 + rng.uniform(-jitter, jitter)) * math.sin(a),
        )
        for a in angles
    ]


def _draw_grains(s: _Scene) -> None:
    """Unmolten raw-material grains (e.g. quartz): angular, raised, with a dark reaction/shrinkage gap."""
    for x, y, r in _place_circles(s, int(s.rng.integers(2, 7)), 18, 70, margin=10):
        poly = _irregular_polygon(s.rng, x, y, r, int(s.rng.integers(5, 9)), 0.35)
        mask = _polygon_mask([poly])
        soft = ndimage.gaussian_filter(mask, 1.5)
        s.z += 0.3 * r * soft + 2.5 * mask * _noise(
            s.rng, 2.5
        )  # rough, angular fracture faces
        s.m += 0.45 * mask
        ring = ndimage.binary_dilation(mask > 0.5, iterations=3) & ~(mask > 0.5)
        s.cavity = np.maximum(s.cavity, 0.7 * ring)  # shrinkage gap around the grain
        s.add_mask("unmolten_grain", mask > 0.5, size_um=2 * r * s.pixel_um)


def _draw_inclusions(s: _Scene) -> None:
    """Crystalline inclusions (refractory stones, undissolved crystals): faceted and bright."""
    for x, y, r in _place_circles(s, int(s.rng.integers(1, 5)), 6, 30, margin=8):
        n = int(s.rng.choice([4, 6, 6, 8]))
        a0 = s.rng.uniform(0, math.pi)
        stretch = s.rng.uniform(0.6, 1.0)
        poly = [
            (
                x + r * math.cos(a0 + 2 * math.pi * k / n),
                y + stretch * r * math.sin(a0 + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]
        mask = _polygon_mask([poly])
        s.z += 0.4 * r * ndimage.gaussian_filter(mask, 0.7)
        s.m += 0.6 * mask
        s.add_mask("crystalline_inclusion", mask > 0.5, size_um=2 * r * s.pixel_um)


def _spherulite(s: _Scene, x, y, r, w):
    dx, dy = s.xx[w] - x, s.yy[w] - y
    rr = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    inside = rr < r * (1 + 0.08 * np.sin(7 * theta + x))
    fibres = 0.5 + 0.5 * np.sin(theta * s.rng.integers(25, 60) + 3 * np.sin(rr / 4))
    return inside, fibres


def _draw_bulk_crystals(s: _Scene) -> None:
    circles = _place_circles(
        s, int(s.rng.integers(4, 14)), 10, 50, margin=-6
    )  # neighbours may impinge
    for x, y, r in circles:
        w = _window(x, y, 1.1 * r)
        if s.xx[w].size == 0:
            continue
        inside, fibres = _spherulite(s, x, y, r, w)
        s.z[w] += inside * (0.15 * r + 1.5 * fibres)
        s.m[w] += inside * (0.2 + 0.1 * fibres)
        s.add("bulk_crystal", (x - r, y - r, x + r, y + r), size_um=2 * r * s.pixel_um)


def _draw_surface_crystals(s: _Scene) -> None:
    """Cross-section: resin on top, then a layer of columnar crystals grown inward from the surface."""
    rng = s.rng
    thick = s.params_px("layer_um", 90)
    y_surf = rng.uniform(0.12, 0.25) * HEIGHT
    surf = y_surf + 3 * _noise(rng, 15, (1, WIDTH))[0]
    resin = s.yy < surf[None, :]
    s.z = np.where(resin, -6.0 + 0.5 * _noise(rng, 6), s.z)
    s.m = np.where(resin, 0.35, s.m)
    cols = np.zeros((HEIGHT, WIDTH))
    x = -5.0
    while (
        x < WIDTH + 5
    ):  # columns of varying width and length, perpendicular to the surface
        w = rng.uniform(6, 18)
        length = thick * rng.uniform(0.75, 1.1)
        col = (
            (np.abs(s.xx - x - w / 2) < w / 2)
            & (s.yy >= surf[None, :])
            & (s.yy < surf[None, :] + length)
        )
        cols = np.where(col, 1.0 + rng.uniform(-0.2, 0.2), cols)
        x += w + rng.uniform(0, 2)
    grain_edges = np.hypot(*np.gradient(cols)) > 0.05
    s.z += 1.5 * cols + 2.0 * ndimage.gaussian_filter(grain_edges.astype(float), 0.6)
    s.m += 0.25 * (cols > 0)
    bottom = surf + thick
    s.add(
        "surface_crystal_layer",
        (0, float(surf.min()), WIDTH, float(min(HEIGHT, bottom.max() * 1.1))),
        size_um=thick * s.pixel_um,
    )


def _draw_dendrites(s: _Scene) -> None:
    rng = s.rng
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0.15, 0.85) * WIDTH, rng.uniform(0.15, 0.85) * HEIGHT
        a = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(120, 300)
        lines, widths = [], []
        for arm in range(
            int(rng.choice([1, 2, 4]))
        ):  # one stem, or a cross of four arms
            aa = a + arm * math.pi / 2
            stem = _walk(rng, x, y, aa, length, step=3, wiggle=0.03)
            lines.append(stem)
            widths.append(5)
            for k, (px, py) in enumerate(stem[4::4]):
                side_len = (1 - k * 4 / max(len(stem), 1)) * rng.uniform(20, 50)
                for sign in (-1, 1):
                    side = _walk(
                        rng,
                        px,
                        py,
                        aa + sign * math.pi / 3,
                        max(side_len, 6),
                        step=2,
                        wiggle=0.02,
                    )
                    lines.append(side)
                    widths.append(2)
        mask = _polyline_mask(lines, widths)
        s.z += 3.0 * ndimage.gaussian_filter(mask, 1.0)
        s.m += 0.3 * mask
        s.add_mask("dendrite", mask > 0.5, size_um=_extent_um(s, mask))


def _draw_phase_separation(s: _Scene, interconnected: bool) -> None:
    """Etched phase-separated glass: one phase leached, the other stands in relief."""
    size_px = s.params_px("phase_size_um", 14)
    if interconnected:
        f = _noise(s.rng, size_px / 3.2)
        phase = ndimage.gaussian_filter((f > 0).astype(float), 0.8)
        kind = "phase_separation_interconnected"
    else:
        # droplets on a jittered lattice (the O(n^2) random placement is too slow for thousands)
        spacing = size_px * 1.5
        img = Image.new("L", (WIDTH, HEIGHT), 0)
        draw = ImageDraw.Draw(img)
        for y in np.arange(-spacing, HEIGHT + spacing, spacing * 0.87):
            shift = spacing / 2 if int(y / spacing) % 2 else 0.0
            for x in np.arange(-spacing + shift, WIDTH + spacing, spacing):
                if s.rng.random() < 0.12:
                    continue
                r = size_px / 2 * s.rng.uniform(0.7, 1.15)
                cx, cy = (
                    x + s.rng.normal(0, spacing * 0.12),
                    y + s.rng.normal(0, spacing * 0.12),
                )
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inside = np.asarray(img) > 0
        depth = ndimage.distance_transform_edt(inside)
        phase = np.sqrt(np.clip(depth / (size_px / 2), 0, 1))
        kind = "phase_separation_droplet"
    s.z += 0.35 * size_px * phase
    s.m += 0.08 * phase
    s.add(kind, (0, 0, WIDTH, HEIGHT), size_um=size_px * s.pixel_um)


def _draw_leached_layer(s: _Scene) -> None:
    """Polished cross-section: embedding resin | porous, darker leached layer | bulk glass."""
    rng = s.rng
    thick = s.params_px("layer_um", 100)
    y_surf = rng.uniform(0.1, 0.22) * HEIGHT
    surf = y_surf + 2.5 * _noise(rng, 20, (1, WIDTH))[0]
    front = surf + thick * (1 + 0.06 * _noise(rng, 30, (1, WIDTH))[0])
    resin = s.yy < surf[None, :]
    layer = (~resin) & (s.yy < front[None, :])
    s.z = np.where(resin, -5.0 + 0.4 * _noise(rng, 8), s.z)
    s.m = np.where(resin, 0.35, s.m)
    porosity = np.clip(_noise(rng, 1.2), 0, None)
    s.z += layer * (1.6 * porosity)
    s.m -= layer * (0.3 + 0.15 * porosity)
    if rng.random() < 0.5:  # drying cracks in the gel layer, parallel to the surface
        lines = [
            [
                (
                    x,
                    float(
                        surf[int(min(max(x, 0), WIDTH - 1))]
                        + thick * rng.uniform(0.3, 0.7)
                    )
                    + rng.normal(0, 1.5),
                )
                for x in np.arange(x0, x0 + rng.uniform(40, 160), 4)
            ]
            for x0 in rng.uniform(0, WIDTH, int(rng.integers(1, 4)))
        ]
        mask = _polyline_mask(lines, [1] * len(lines)) * layer
        _cut(s, mask, 2.0, 0.7)
    s.add(
        "leached_layer",
        (0, float(surf.min()), WIDTH, float(front.max())),
        size_um=thick * s.pixel_um,
    )


def _draw_scratches(s: _Scene) -> None:
    rng = s.rng
    base = rng.uniform(0, math.pi)
    for _ in range(int(rng.integers(1, 5))):
        a = base + rng.normal(0, 0.3)
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        half = rng.uniform(150, 500)
        pts = [
            (
                cx + t * math.cos(a) + rng.normal(0, 0.3),
                cy + t * math.sin(a) + rng.normal(0, 0.3),
            )
            for t in np.linspace(-half, half, 60)
        ]
        mask = _polyline_mask([pts], [int(rng.integers(1, 4))])
        _cut(s, mask, 2.5, 0.35)
        s.add_mask("scratch", mask > 0.5, size_um=_extent_um(s, mask))


def _draw_fracture_surface(s: _Scene) -> None:
    """Fracture surface seen face on: smooth mirror around the origin, mist, then radial hackle."""
    rng = s.rng
    ox = rng.uniform(0.25, 0.75) * WIDTH
    oy = float(HEIGHT + rng.uniform(-30, 10))  # origin near the bottom (tensile) edge
    r_mirror = rng.uniform(0.25, 0.45) * HEIGHT
    r_mist = r_mirror * rng.uniform(1.25, 1.45)
    dx, dy = s.xx - ox, s.yy - oy
    rr, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    t_mist = np.clip((rr - r_mirror) / (r_mist - r_mirror), 0, 1)
    rough = _noise(rng, 1.3)
    ridge_noise = rng.standard_normal(2048)
    ridge_noise = ndimage.gaussian_filter1d(ridge_noise, 1.2, mode="wrap")
    idx = ((theta + math.pi) / (2 * math.pi) * 2048 * 0.999).astype(int)
    ridges = (
        ridge_noise[idx]
        * np.clip((rr - r_mist) / (0.3 * r_mist), 0, 1)
        * (1 + 0.5 * _noise(rng, 20))
    )
    s.z += 0.6 * t_mist * rough + 6.0 * ridges + 0.3 * _noise(rng, 60)
    # Wallner-like faint arcs inside the mirror
    s.z += 0.3 * np.sin(rr / rng.uniform(6, 12)) * (rr < r_mirror)
    origin_r = rng.uniform(6, 14)
    s.add(
        "fracture_origin",
        (ox - origin_r, oy - origin_r, ox + origin_r, min(oy + origin_r, HEIGHT)),
    )
    s.add(
        "fracture_mirror",
        (ox - r_mirror, oy - r_mirror, ox + r_mirror, oy + r_mirror),
        size_um=r_mirror * s.pixel_um,
    )
    s.add(
        "fracture_mist",
        (ox - r_mist, oy - r_mist, ox + r_mist, oy + r_mist),
        size_um=(r_mist - r_mirror) * s.pixel_um,
    )
    s.add("fracture_hackle", (0, 0, WIDTH, HEIGHT))


_DRAWERS = {
    "clean_glass": _draw_clean_glass,
    "cracks": lambda s: _draw_cracks(s, network=False),
    "crack_network": lambda s: _draw_cracks(s, network=True),
    "pores": lambda s: _draw_cavities(s, big=False),
    "bubbles": lambda s: _draw_cavities(s, big=True),
    "unmolten_grains": _draw_grains,
    "crystalline_inclusions": _draw_inclusions,
    "surface_crystallisation": _draw_surface_crystals,
    "bulk_crystallisation": _draw_bulk_crystals,
    "dendrites": _draw_dendrites,
    "phase_separation_droplet": lambda s: _draw_phase_separation(
        s, interconnected=False
    ),
    "phase_separation_interconnected": lambda s: _draw_phase_separation(
        s, interconnected=True
    ),
    "leached_layer": _draw_leached_layer,
    "scratches": _draw_scratches,
    "fracture_surface": _draw_fracture_surface,
}


def render_micrograph(
    spec: MicrographSpec, rng: np.random.Generator
) -> tuple[Image.Image, dict]:
    """Draw ``spec`` as an SE micrograph with data bar; return the image (mode L) and its truth.

    Truth boxes are ``[x0, y0, x1, y1]`` in pixels of the returned image (origin top-left);
    the image area is the top ``HEIGHT`` rows, the data bar the bottom ``BAR_HEIGHT`` rows.
    """
    hfw = hfw_um(spec.magnification)
    pixel_um = hfw / WIDTH
    scene = _Scene(rng, pixel_um, spec.params)
    scene.z += 0.25 * _noise(rng, 30)  # polishing undulation common to every sample
    for name in _DRAW_ORDER:
        if name in spec.phenomena:
            _DRAWERS[name](scene)
    area = _secondary_electron_signal(scene, spec, rng)
    bar_um = _scale_bar_um(hfw)
    bar_px = round(bar_um / pixel_um)
    image = Image.new("L", (WIDTH, HEIGHT + BAR_HEIGHT), 0)
    image.paste(Image.fromarray(area), (0, 0))
    bar_box = _draw_data_bar(image, spec, hfw, bar_um, bar_px)
    types = sorted({f["type"] for f in scene.features})
    truth = {
        "phenomena": list(spec.phenomena),
        "features": scene.features,
        "defect": any(f["defect"] for f in scene.features),
        "defect_types": sorted({f["type"] for f in scene.features if f["defect"]}),
        "feature_types": types,
        "magnification": spec.magnification,
        "hfw_um": round(hfw, 4),
        "pixel_size_um": round(pixel_um, 6),
        "scale_bar_um": bar_um,
        "scale_bar_px": bar_px,
        "scale_bar_box": bar_box,
        "kv": spec.kv,
        "wd_mm": spec.wd_mm,
        "detector": spec.detector,
        "signal": "SE",
        "bar_style": spec.bar_style,
        "charging_streaks": spec.charging,
        "image_size": [WIDTH, HEIGHT + BAR_HEIGHT],
        "image_area": [0, 0, WIDTH, HEIGHT],
        "params": dict(spec.params),
    }
    return image, truth


def _secondary_electron_signal(
    s: _Scene, spec: MicrographSpec, rng: np.random.Generator
) -> np.ndarray:
    z = ndimage.gaussian_filter(s.z, 0.8)
    gy, gx = np.gradient(z)
    slope = np.hypot(gx, gy)
    phi = rng.uniform(0, 2 * math.pi)  # where the detector sits
    signal = s.m * (0.42 + 0.75 * np.tanh(0.9 * slope)) + 0.12 * np.tanh(
        gx * math.cos(phi) + gy * math.sin(phi)
    )
    signal *= 1.0 - 0.8 * np.clip(s.cavity, 0, 1)
    signal *= 1.0 + 0.06 * _noise(
        rng, 80
    )  # uneven detector collection across the field
    signal = ndimage.gaussian_filter(np.clip(signal, 0, None), 0.6)  # beam spot
    if spec.charging:
        for _ in range(int(rng.integers(1, 4))):
            r = int(rng.integers(5, HEIGHT - 5))
            x0 = int(rng.integers(0, WIDTH // 2))
            tail = np.exp(
                -np.clip(np.arange(WIDTH) - x0, 0, None) / rng.uniform(40, 200)
            ) * (np.arange(WIDTH) >= x0)
            h = int(rng.integers(1, 4))
            signal[r : r + h] += rng.uniform(0.3, 0.8) * tail[None, :]
            signal[r + h :, :] = np.roll(
                signal[r + h :, :], int(rng.integers(-2, 3)), axis=1
            )  # the scan jumps
    noisy = rng.poisson(signal * spec.dose) / spec.dose + rng.normal(
        0, 0.03, signal.shape
    )
    lo, hi = np.percentile(noisy, [0.5, 99.6])
    gain = rng.uniform(0.85, 1.0)
    offset = rng.uniform(5, 25)
    out = offset + gain * 230 * (noisy - lo) / max(hi - lo, 1e-6)
    return np.clip(out, 0, 255).astype(np.uint8)


def _scale_bar_um(hfw: float) -> float:
    """Largest round length that spans at most a quarter of the field."""
    fitting = [b for b in _NICE_BARS_UM if b <= hfw / 4]
    return float(fitting[-1] if fitting else _NICE_BARS_UM[0])


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Vera Sans shipped with reportlab (has µ, same file everywhere); Pillow's default otherwise."""
    import reportlab

    path = os.path.join(os.path.dirname(reportlab.__file__), "fonts", "Vera.ttf")
    if os.path.exists(path):
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def _format_length(um: float) -> str:
    return f"{round(um * 1000)} nm" if um < 1 else f"{um:g} µm"


def _format_mag(mag: float, style: str) -> str:
    if style == "zeiss":
        return f"{mag / 1000:.2f} K X"
    return f"{int(mag):,} x".replace(",", " ")


def _draw_data_bar(
    image: Image.Image, spec: MicrographSpec, hfw: float, bar_um: float, bar_px: int
) -> list[int]:
    draw = ImageDraw.Draw(image)
    font = _font(11)
    y0 = HEIGHT
    if spec.bar_style == "zeiss":
        row1 = f"EHT = {spec.kv:.2f} kV   WD = {spec.wd_mm:.1f} mm"
        row2 = f"Mag = {_format_mag(spec.magnification, 'zeiss')}   Signal A = {spec.detector}"
    else:
        row1 = (
            f"HV {spec.kv:.1f} kV   WD {spec.wd_mm:.1f} mm   det {spec.detector}   SE"
        )
        row2 = f"Mag {_format_mag(spec.magnification, 'fei')}   HFW {_format_length(round(hfw, 3))}"
    draw.text((6, y0 + 5), row1, font=font, fill=255)
    draw.text((6, y0 + 21), row2, font=font, fill=255)
    x1 = WIDTH - 12
    x0 = x1 - bar_px
    yb = y0 + 30
    draw.rectangle(
        [x0, yb, x1 - 1, yb + 3], fill=255
    )  # exactly bar_px white pixels wide
    label = _format_length(bar_um)
    tw = draw.textlength(label, font=font)
    draw.text((x0 + (bar_px - tw) / 2, y0 + 12), label, font=font, fill=255)
    return [x0, yb, x1, yb + 4]


def spec_as_dict(spec: MicrographSpec) -> dict:
    d = asdict(spec)
    d["phenomena"] = list(spec.phenomena)
    return d
