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
    # local texture: uniform local binary patterns (8 neighbours, 0.02 grey tolerance); lbp_k is the share of pixels
    # with k brighter neighbours in one arc, lbp_9 the non-uniform rest (noise, fine clutter)
    *(f"lbp_{k}" for k in range(10)),
    # band-pass energy at scales 1-2, 2-4, 4-8 and 8-16 px (difference of Gaussians) over grey std
    *(f"dog_energy_{k}" for k in range(4)),
    "orientation_entropy",  # entropy of the gradient-orientation histogram (8 bins): low for axis-aligned plots, fringes
    "axis_aligned_gradients",  # share of gradient energy on horizontal/vertical edges (plots, tables, diagrams)
    "scan_anisotropy",  # log ratio of row-wise to column-wise residual noise (line-scanned SEM/AFM images)
    "row_streaks",  # row-to-row jumps of the row means (scan lines, charging) over grey std
    "bright_gradient_corr",  # local brightness vs local gradient: SE edge brightening > 0, dark outlines (TEM) < 0
    "bright_ridge_corr",  # brightness vs -LoG (DoG 1-2 px): bright blobs/ridges (SE) versus dark particles (TEM)
    "saturated_white",  # clipped white and black pixels of the picture
    "saturated_black",
    "saturation_mean",  # HSV saturation: mean and 90th percentile
    "saturation_p90",
    "red_minus_blue",  # mean R-B (optical: warm; AFM height maps: orange) and its mean absolute value
    "red_blue_abs",
    "green_excess",  # mean G-(R+B)/2 (green fluorescence)
    *(f"grey_hist_{k}" for k in range(8)),  # coarse grey-level histogram of the picture
    *(f"block_std_p{q}" for q in (10, 50, 90)),  # percentiles of 8x8 block std over the global std
    "otsu_separability",  # between-class variance of the best 2-level threshold over total variance
    "aspect_ratio",  # log(width / height) of the panel as given
    "fullres_noise",  # median |residual of a 3x3 mean| / std on a native-resolution centre crop
    "fullres_laplace_kurtosis",  # kurtosis of the native-resolution Laplacian: JPEG blocks/sharp text vs shot noise
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


_LBP_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # circular order


def _texture_features(picture: np.ndarray, std: float) -> dict[str, float]:
    """Local binary patterns, band-pass energies, orientation and scan-line statistics of the grey picture."""
    h, w = picture.shape
    out: dict[str, float] = {}
    centre = picture[1:-1, 1:-1]
    threshold = centre + 0.02
    bits = [(picture[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] >= threshold).view(np.uint8) for dy, dx in _LBP_OFFSETS]
    ones, transitions = np.zeros_like(bits[0]), np.zeros_like(bits[0])
    for k, bit in enumerate(bits):
        ones += bit
        transitions += bit ^ bits[k - 1]
    code = np.where(transitions <= 2, ones, 9)
    lbp = np.bincount(code.ravel(), minlength=10) / max(1, code.size)
    out.update({f"lbp_{k}": float(lbp[k]) for k in range(10)})

    # sigma 1 and 2 at full resolution, 4 and 8 as 2 and 4 on a 2x2-binned copy (same band, a quarter of the work)
    smooth = ndimage.gaussian_filter(picture, 1.0, truncate=3.0)
    levels = [picture, smooth, ndimage.gaussian_filter(picture, 2.0, truncate=3.0)]
    if h >= 8 and w >= 8:
        binned = picture[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        coarse = [ndimage.gaussian_filter(binned, 1.0, truncate=3.0)]
        coarse += [ndimage.gaussian_filter(binned, s, truncate=3.0) for s in (2.0, 4.0)]
        bands = [levels[0] - levels[1], levels[1] - levels[2], coarse[0] - coarse[1], coarse[1] - coarse[2]]
    else:
        bands = [levels[0] - levels[1], levels[1] - levels[2], np.zeros(1), np.zeros(1)]
    out.update({f"dog_energy_{k}": float(band.std() / std) for k, band in enumerate(bands)})

    gy, gx = np.gradient(smooth)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    hist = np.bincount(np.minimum((angle * (8 / np.pi)).astype(int), 7).ravel(), magnitude.ravel(), minlength=8)
    hist = hist / (hist.sum() + 1e-9)
    out["orientation_entropy"] = float(-(hist[hist > 0] * np.log(hist[hist > 0])).sum())
    out["axis_aligned_gradients"] = float(hist[0] + hist[4] + 0.5 * (hist[3] + hist[7]))

    residual = picture - ndimage.uniform_filter(picture, 3)
    along_rows, along_cols = np.diff(residual, axis=1).std(), np.diff(residual, axis=0).std()
    out["scan_anisotropy"] = float(np.log((along_rows + 1e-5) / (along_cols + 1e-5)))
    row_means = picture.mean(axis=1)
    out["row_streaks"] = float(np.std(np.diff(row_means)) / std) if h > 2 else 0.0

    local_mean, local_gradient = ndimage.uniform_filter(picture, 5), ndimage.uniform_filter(magnitude, 5)
    out["bright_gradient_corr"] = _corr(local_mean, local_gradient)
    out["bright_ridge_corr"] = _corr(picture, levels[1] - levels[2])  # difference of Gaussians ~ -LoG(sigma 1.5)
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


def _fullres_noise(image: Image.Image, side: int = 192) -> tuple[float, float]:
    """Noise statistics on a centre crop at the native resolution (downscaling averages noise away)."""
    x0, y0 = max(0, image.width // 2 - side // 2), max(0, image.height // 2 - side // 2)
    crop = image.crop((x0, y0, min(image.width, x0 + side), min(image.height, y0 + side))).convert("L")
    grey = np.asarray(crop, dtype=np.float32) / 255.0
    if min(grey.shape) < 8:
        return 0.0, 0.0
    noise = float(np.median(np.abs(grey - ndimage.uniform_filter(grey, 3))) / (grey.std() + 1e-3))
    laplace = ndimage.laplace(grey)
    kurtosis = float(((laplace - laplace.mean()) ** 4).mean() / (laplace.var() ** 2 + 1e-12))
    return noise, min(kurtosis, 1000.0)


def image_features(image: Image.Image) -> dict[str, float]:
    """All features of ``FEATURE_NAMES`` for one panel image, as a name -> value dict."""
    if min(image.size) < 8:  # a sliver or an icon: enlarge so every filter has room (it will score as flat)
        image = image.resize((max(8, image.width), max(8, image.height)), Image.Resampling.NEAREST)
    rgb = load_rgb(image)
    grey_full = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top_full = np.maximum(np.maximum(red, green), blue)  # ~5x faster than rgb.max(axis=2)
    chroma_full = top_full - np.minimum(np.minimum(red, green), blue)

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
    edge_brightening = float((picture[strong].mean() - picture.mean()) / std) if strong.any() else 0.0  # 0: flat panel
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
    values.update(_texture_features(picture, std))
    values["saturated_white"] = float((picture > 0.98).mean())
    values["saturated_black"] = float((picture < 0.02).mean())
    saturation = chroma / (top_full[rows, cols] + 1e-3)
    values["saturation_mean"] = float(saturation.mean())
    values["saturation_p90"] = float(np.quantile(saturation[::2, ::2], 0.9))
    red_blue = rgb_core[..., 0] - rgb_core[..., 2]
    values["red_minus_blue"] = float(red_blue.mean())
    values["red_blue_abs"] = float(np.abs(red_blue).mean())
    values["green_excess"] = float((rgb_core[..., 1] - (rgb_core[..., 0] + rgb_core[..., 2]) / 2).mean())
    coarse = np.histogram(picture, bins=8, range=(0, 1))[0] / picture.size
    values.update({f"grey_hist_{k}": float(coarse[k]) for k in range(8)})
    if bh >= 2 and bw >= 2:
        relative = blocks / std
        values.update({f"block_std_p{q}": float(np.percentile(relative, q)) for q in (10, 50, 90)})
    else:
        values.update({f"block_std_p{q}": 0.0 for q in (10, 50, 90)})
    cumulative, first_moment = np.cumsum(prob), np.cumsum(prob * (np.arange(64) + 0.5) / 64)
    between = (first_moment[-1] * cumulative - first_moment) ** 2 / (cumulative * (1 - cumulative) + 1e-9)
    values["otsu_separability"] = float(between.max() / (picture.var() + 1e-6))
    values["aspect_ratio"] = float(np.log(image.width / max(1, image.height)))
    values["fullres_noise"], values["fullres_laplace_kurtosis"] = _fullres_noise(image)
    assert tuple(values) == FEATURE_NAMES, "feature dict out of sync with FEATURE_NAMES"
    # flat or degenerate panels can leave an undefined statistic; a NaN would make the score meaningless
    values = {name: value if np.isfinite(value) else 0.0 for name, value in values.items()}
    return values
