"""Build docs/synth_contact_sheet.png: 12 synthetic micrographs covering the phenomena + 2 page thumbnails.

Run: .venv/bin/python docs/make_contact_sheet.py [--out docs/synth_contact_sheet.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pdfplumber
from PIL import Image, ImageDraw

from glassllava.synth import MicrographSpec, generate_corpus, render_micrograph
from glassllava.synth.micrographs import WIDTH, _font, nice_magnification

# (phenomena, magnification, physical parameters): one tile each
TILES = [
    (("crack_network",), 150, {}),
    (("bubbles",), 250, {}),
    (("pores", "scratches"), 1500, {}),
    (("unmolten_grains", "crystalline_inclusions"), 400, {}),
    (("surface_crystallisation",), None, {"layer_um": 6.0}),
    (("bulk_crystallisation",), 800, {}),
    (("dendrites",), 500, {}),
    (("phase_separation_droplet",), None, {"phase_size_um": 0.15}),
    (("phase_separation_interconnected",), None, {"phase_size_um": 0.2}),
    (("leached_layer",), None, {"layer_um": 4.0}),
    (("fracture_surface",), 120, {}),
    (("clean_glass",), 5000, {}),
]


def _mag(params: dict) -> float:
    size = params.get("phase_size_um")
    if size:
        return nice_magnification(127_000 / (size / 14 * WIDTH))
    return nice_magnification(127_000 / (params["layer_um"] / 100 * WIDTH))


def build_sheet(out: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tiles = []
    for k, (phen, mag, params) in enumerate(TILES):
        spec = MicrographSpec(
            phenomena=phen,
            magnification=mag or _mag(params),
            params=params,
            bar_style="fei" if k % 2 else "zeiss",
            detector="ETD" if k % 2 else "SE2",
            charging=k in (2, 9),
            dose=45,
        )
        image, truth = render_micrograph(spec, rng)
        tile = image.convert("RGB")
        draw = ImageDraw.Draw(tile)
        for feat in truth["features"][:12]:  # the truth boxes, in red over the picture
            draw.rectangle(
                feat["box"],
                outline=(255, 60, 60) if feat["defect"] else (60, 200, 255),
                width=2,
            )
        draw.rectangle([0, 0, WIDTH, 22], fill=(255, 255, 255))
        draw.text((4, 3), " + ".join(phen), font=_font(15), fill=(0, 0, 0))
        tiles.append(tile.resize((384, 330)))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_corpus(Path(tmp), papers=2, seed=seed)
        pages = []
        for pdf_path, page_no in [
            (Path(tmp) / "pdfs" / f"synth_{seed}_0000.pdf", 1),
            (Path(tmp) / "pdfs" / f"synth_{seed}_0001.pdf", 2),
        ]:
            with pdfplumber.open(pdf_path) as pdf:
                page = pdf.pages[min(page_no, len(pdf.pages)) - 1]
                pages.append(page.to_image(resolution=60).original.convert("RGB"))
        del manifest
    page_h = 330 * 3
    pages = [p.resize((int(p.width * page_h / p.height), page_h)) for p in pages]
    sheet_w = 4 * 384 + sum(p.width for p in pages) + 10 * (len(pages) + 1)
    sheet = Image.new("RGB", (sheet_w, page_h + 10), (255, 255, 255))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % 4) * 384, (k // 4) * 330 + 5))
    x = 4 * 384 + 10
    for p in pages:
        sheet.paste(p, (x, 5))
        x += p.width + 10
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet = sheet.quantize(
        colors=128, dither=Image.Dither.NONE
    )  # keeps the PNG well under 1.5 MB
    sheet.save(out, optimize=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("synth_contact_sheet.png")
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(build_sheet(args.out, args.seed))
