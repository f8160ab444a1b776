"""Pixel features that tell an SEM micrograph from other figure panels; consumed by ``glassllava.sem``.

Every feature is a physically motivated number computed on a downscaled grey (and colour) copy:

- colour: SEM detectors give grey images; optical, AFM, fluorescence and EDX maps are coloured.
- data bar: SEM instruments print a dark strip with white text (HV, WD, Mag, det, scale) at the bottom.
- grey-level statistics: secondary-electron images use the full grey range with shading and bright
  edges (edge brightening); bright-field TEM shows dark particles on a flat bright background.
- spectra: SEM has broadband texture and shot noise; HRTEM lattice fringes and SAED patterns make
  sharp periodic peaks; plots and diagrams are mostly flat white with thin lines.

The order of ``FEATURE_NAMES`` is the order of the vector returned by ``image_features`` and of the
coefficients stored in ``sem_model.json``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

# Longer side after downscaling. 256 px keeps data-bar text and scale bars visible at ~150 dpi crops
# while keeping one image under ~10 ms of numpy work.
WORK_SIZE = 256

FEATURE_NAMES: tuple[str, ...] = (
    "chroma_mean",  # mean (max-min) over RGB channels, 0..1
    "colour_fraction",  # fraction of pixels with chroma > 0.12
    "hue_spread",  # fraction of the 12 hue bins holding >2% of the coloured pixels
    "white_fraction",  # fraction of near-white pixels (page background, plots)
    "black_fraction",  # fraction of near-black pixels (fluorescence background)
    "data_bar",  # 0..1, dark full-width strip at the bottom with bright text in it
    "grey_std",  # contrast of the micrograph area
    "grey_skew",  # skewness of grey levels: TEM bright background with dark particles is negative
    "grey_median",
    "mode_fraction",  # fraction of pixels within +-4% of the histogram mode (flat background)
    "histogram_entropy",  # bits, 64 bins
    "edge_brightening",  # mean grey at strong edges minus mean grey, in std units (SEM > 0)
    "gradient_energy",  # mean gradient magnitude / grey std
    "noise_level",  # std of (image - 3x3 mean) / grey std: shot noise of scanned images
    "spectrum_slope",  # log-log slope of the radial power spectrum
    "periodic_peak",  # strongest off-centre FFT peak over the annulus median (lattice fringes, SAED)
    "local_contrast_cv",  # coefficient of variation of block standard deviations
    "flat_fraction",  # fraction of 8x8 blocks with almost no texture
    "vertical_shading",  # |top-bottom| mean difference in std units (tilted SEM views, detector shadow)
    "ridge_polarity",  # skewness of -LoG(sigma=1): thin bright ridges (SE edge effect) > 0, dark outlines < 0
    "shading_direction",  # length of the mean gradient vector / mean gradient length (one-sided detector lighting)
    "orientation_order",  # doubled-angle resultant: aligned stripes, fringes, fibres
    "mode_position",  # grey level of the histogram mode (bright flat background: bright-field TEM, optical)
    "flat_bright_fraction",  # flat 8x8 blocks brighter than the median (empty TEM/optical background)
    "flat_dark_fraction",  # flat 8x8 blocks darker than the median (STEM/fluorescence background)
)


def load_rgb(image: Image.Image, size: int = WORK_SIZE) -> np.ndarray:
    """Downscale so the longer side is at most ``size`` and return float RGB in [0, 1], shape (H, W, 3)."""
    if image.mode == "P" or image.mode == "LA" or image.mode == "RGBA":
        # Paste on white so transparent plot backgrounds read as page white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    scale = size / max(image.size)
    if scale < 1:
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.float32) / 255.0


def _trim_white_border(grey: np.ndarray, level: float = 0.96) -> tuple[slice, slice]:
    """Rows/columns that are not entirely page-white: crops often keep a white margin."""
    rows = np.flatnonzero((grey < level).mean(axis=1) > 0.02)
    cols = np.flatnonzero((grey < level).mean(axis=0) > 0.02)
    if len(rows) < 8 or len(cols) < 8:
        return slice(None), slice(None)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _bar_at_bottom(grey: np.ndarray, bar_rows: np.ndarray, text: np.ndarray) -> tuple[float, int]:
    """Find a run of ``bar_rows`` touching the bottom; score it by the text inside and the picture above."""
    height = grey.shape[0]
    bottom_gap = max(1, int(0.02 * height))
    if not bar_rows[height - 1 - bottom_gap :].any():
        return 0.0, height
    end = height - 1
    while end > 0 and not bar_rows[end]:
        end -= 1
    # walk upwards while rows stay bar-like, allowing one-row gaps where a text line is dense
    start, gaps = end, 0
    while start > 0 and (bar_rows[start - 1] or gaps < 1):
        gaps = 0 if bar_rows[start - 1] else gaps + 1
        start -= 1
    start += gaps
    bar_height = end - start + 1
    if bar_height < 3 or bar_height > 0.25 * height or start < 0.4 * height:
        return 0.0, height
    text_fraction = float(text[start : end + 1].mean())
    if not 0.0015 < text_fraction < 0.4:
        return 0.0, height
    above = grey[max(0, start - 2 * bar_height) : start]
    return (1.0 if above.size else 0.0), start


def _data_bar(grey: np.ndarray) -> tuple[float, int]:
    """Score an instrument data bar at the bottom; also return its first row (``height`` when none).

    Most SEMs (FEI/Thermo, JEOL, Hitachi) print white text on a black strip; Zeiss often prints dark
    text on a light strip. The light variant is accepted only below a picture that is not itself page
    white, so the x-axis labels under a plot do not count.
    """
    height = grey.shape[0]
    dark_score, dark_start = _bar_at_bottom(grey, (grey < 0.22).mean(axis=1) > 0.55, grey > 0.5)
    if dark_score > 0:
        above = grey[max(0, dark_start - (height - dark_start)) : dark_start]
        return float(np.clip((above.mean() - grey[dark_start:].mean()) / 0.25, 0, 1)), dark_start
    light_score, light_start = _bar_at_bottom(grey, (grey > 0.8).mean(axis=1) > 0.6, grey < 0.4)
    if light_score > 0:
        above = grey[: light_start]
        if (above > 0.9).mean() < 0.3 and above.mean() < 0.7:
            return float(np.clip((grey[light_start:].mean() - above.mean()) / 0.25, 0, 1)), light_start
    return 0.0, height


def _radial_spectrum(grey: np.ndarray) -> tuple[float, float]:
    """Log-log slope of radially averaged power, and the strongest periodic peak ratio."""
    side = 128
    h, w = grey.shape
    if h < 16 or w < 16:
        return 0.0, 0.0
    tile = np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    tile = tile - tile.mean()
    window = np.outer(np.hanning(side), np.hanning(side)).astype(np.float32)
    power = np.abs(np.fft.fftshift(np.fft.fft2(tile * window))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - side // 2, xx - side // 2).astype(int)
    counts = np.bincount(radius.ravel())
    radial = np.bincount(radius.ravel(), power.ravel()) / np.maximum(counts, 1)
    freqs = np.arange(4, side // 2)
    log_power = np.log(radial[freqs] + 1e-12)
    log_freqs = np.log(freqs)
    # closed-form least-squares slope (np.polyfit goes through BLAS threads, slow on busy machines)
    slope = float(np.cov(log_freqs, log_power, bias=True)[0, 1] / log_freqs.var())
    # periodicity: peak in the annulus 6..60 relative to the radial mean at that radius
    annulus = (radius >= 6) & (radius < side // 2 - 4)
    ratio = power[annulus] / (radial[radius[annulus]] + 1e-12)
    peak = float(np.log10(np.max(ratio) + 1e-12))
    return slope, peak


def image_features(image: Image.Image) -> dict[str, float]:
    """All features of ``FEATURE_NAMES`` for one panel image, as a name -> value dict."""
    rgb = load_rgb(image)
    grey_full = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    chroma_full = rgb.max(axis=2) - rgb.min(axis=2)

    rows, cols = _trim_white_border(grey_full)
    grey = grey_full[rows, cols]
    chroma = chroma_full[rows, cols]
    rgb_core = rgb[rows, cols]

    coloured = chroma > 0.12
    colour_fraction = float(coloured.mean())
    if coloured.sum() > 20:
        hsv = np.asarray(Image.fromarray((rgb_core * 255).astype(np.uint8)).convert("HSV"))
        hue_hist = np.bincount((hsv[..., 0][coloured].astype(int) * 12) // 256, minlength=12)
        hue_spread = float((hue_hist / hue_hist.sum() > 0.02).mean())
    else:
        hue_spread = 0.0

    data_bar, bar_start = _data_bar(grey)
    picture = grey[:bar_start] if data_bar > 0 else grey
    if picture.shape[0] < 8:
        picture = grey

    std = float(picture.std()) + 1e-3
    centred = picture - picture.mean()
    skew = float((centred**3).mean() / std**3)
    hist = np.histogram(picture, bins=64, range=(0, 1))[0].astype(np.float64)
    prob = hist / hist.sum()
    entropy = float(-(prob[prob > 0] * np.log2(prob[prob > 0])).sum())
    mode = (np.argmax(hist) + 0.5) / 64
    mode_fraction = float((np.abs(picture - mode) < 0.04).mean())

    gy, gx = np.gradient(ndimage.uniform_filter(picture, 2))
    magnitude = np.hypot(gx, gy)
    strong = magnitude > np.quantile(magnitude, 0.9)
    edge_brightening = float((picture[strong].mean() - picture.mean()) / std)
    gradient_energy = float(magnitude.mean() / std)
    noise_level = float((picture - ndimage.uniform_filter(picture, 3)).std() / std)

    slope, peak = _radial_spectrum(picture)

    block = 8
    bh, bw = picture.shape[0] // block, picture.shape[1] // block
    if bh >= 2 and bw >= 2:
        blocks = picture[: bh * block, : bw * block].reshape(bh, block, bw, block).std(axis=(1, 3))
        local_contrast_cv = float(blocks.std() / (blocks.mean() + 1e-3))
        flat = blocks < 0.015
        flat_fraction = float(flat.mean())
        block_means = picture[: bh * block, : bw * block].reshape(bh, block, bw, block).mean(axis=(1, 3))
        brighter = block_means > np.median(picture)
        flat_bright_fraction = float((flat & brighter).mean())
        flat_dark_fraction = float((flat & ~brighter).mean())
    else:
        local_contrast_cv, flat_fraction, flat_bright_fraction, flat_dark_fraction = 0.0, 0.0, 0.0, 0.0
    ridges = -ndimage.gaussian_laplace(picture, 1.0)
    ridge_std = float(ridges.std()) + 1e-6
    ridge_polarity = float((((ridges - ridges.mean()) / ridge_std) ** 3).mean())
    total = float(magnitude.sum()) + 1e-6
    shading_direction = float(np.hypot(gx.sum(), gy.sum()) / total)
    angle2 = 2 * np.arctan2(gy, gx)
    orientation_order = float(np.hypot((magnitude * np.cos(angle2)).sum(), (magnitude * np.sin(angle2)).sum()) / total)
    third = max(1, picture.shape[0] // 3)
    vertical_shading = float(abs(picture[:third].mean() - picture[-third:].mean()) / std)

    values = {
        "chroma_mean": float(chroma.mean()),
        "colour_fraction": colour_fraction,
        "hue_spread": hue_spread,
        "white_fraction": float((grey_full > 0.94).mean()),
        "black_fraction": float((grey < 0.06).mean()),
        "data_bar": data_bar,
        "grey_std": std,
        "grey_skew": skew,
        "grey_median": float(np.median(picture)),
        "mode_fraction": mode_fraction,
        "histogram_entropy": entropy,
        "edge_brightening": edge_brightening,
        "gradient_energy": gradient_energy,
        "noise_level": noise_level,
        "spectrum_slope": slope,
        "periodic_peak": peak,
        "local_contrast_cv": local_contrast_cv,
        "flat_fraction": flat_fraction,
        "vertical_shading": vertical_shading,
        "ridge_polarity": ridge_polarity,
        "shading_direction": shading_direction,
        "orientation_order": orientation_order,
        "mode_position": float(mode),
        "flat_bright_fraction": flat_bright_fraction,
        "flat_dark_fraction": flat_dark_fraction,
    }
    assert tuple(values) == FEATURE_NAMES, "feature dict out of sync with FEATURE_NAMES"
    return values
