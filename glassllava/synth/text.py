"""Prose for synthetic papers: titles, sections, captions and figure citations built from the truth.

Every sentence about a micrograph is generated from its truth record, so text and pixels agree.
Words are never hyphenated at line ends; the layout only breaks lines at spaces.
"""

from __future__ import annotations

import numpy as np

NBSP = "\u00a0"  # joins "Fig. 3a" so the citation never breaks across lines; drawn as a space

# one keyword per phenomenon that every caption phrase for it contains (tests and later stages use it)
PHENOMENON_KEYWORDS = {
    "clean_glass": "homogeneous",
    "cracks": "crack",
    "crack_network": "crack network",
    "pores": "pore",
    "bubbles": "bubble",
    "unmolten_grains": "unmolten",
    "crystalline_inclusions": "inclusion",
    "surface_crystallisation": "surface crystal",
    "bulk_crystallisation": "crystal",
    "dendrites": "dendrit",
    "phase_separation_droplet": "droplet",
    "phase_separation_interconnected": "interconnected",
    "leached_layer": "leached",
    "scratches": "scratch",
    "fracture_surface": "mirror",
}
_PHRASES = {
    "clean_glass": [
        "a homogeneous glass free of defects",
        "a clean, homogeneous glass surface",
        "a homogeneous, featureless glass",
    ],
    "cracks": [
        "cracks running across the surface",
        "isolated cracks",
        "branching cracks",
    ],
    "crack_network": [
        "a radial crack network",
        "a crack network of radial and ring cracks",
        "a dense crack network",
    ],
    "pores": ["small pores", "scattered pores", "fine closed pores"],
    "bubbles": [
        "gas bubbles",
        "large gas bubbles (seeds)",
        "open gas bubbles cut by the surface",
    ],
    "unmolten_grains": [
        "unmolten raw material grains",
        "unmolten quartz grains",
        "angular unmolten batch grains",
    ],
    "crystalline_inclusions": [
        "faceted crystalline inclusions",
        "crystalline inclusions",
        "small crystalline inclusions (stones)",
    ],
    "surface_crystallisation": [
        "a surface crystallised layer",
        "columnar surface crystals growing inward",
        "a continuous layer of surface crystals",
    ],
    "bulk_crystallisation": [
        "spherulitic crystals in the bulk",
        "bulk crystallisation with spherulitic crystals",
        "crystals dispersed through the bulk",
    ],
    "dendrites": [
        "dendritic crystals",
        "dendrites with secondary arms",
        "large dendritic crystals",
    ],
    "phase_separation_droplet": [
        "droplet phase separation",
        "a droplet microstructure of the separated phase",
        "isolated droplets of the boron rich phase",
    ],
    "phase_separation_interconnected": [
        "interconnected phase separation",
        "an interconnected (spinodal) microstructure",
        "two interconnected phases",
    ],
    "leached_layer": [
        "a leached surface layer",
        "a porous leached layer at the surface",
        "the leached (gel) layer on the bulk glass",
    ],
    "scratches": [
        "polishing scratches",
        "fine scratches from polishing",
        "a few scratches",
    ],
    "fracture_surface": [
        "the fracture mirror, mist and hackle",
        "mirror, mist and hackle regions around the origin",
        "a fracture mirror bounded by mist and hackle",
    ],
}
_CAUSES = {
    "crack_network": "The crack network is the result of thermal stresses built up during the rapid quench, which were not relieved because the glass was not annealed.",
    "cracks": "These cracks are attributed to residual thermal stress from the fast cooling of the melt.",
    "bubbles": "The bubbles are gas inclusions that had no time to rise and escape during the short fining step, even though the melt was hot and fluid.",
    "pores": "The pores are remnants of gas released by the batch that were not fully removed from the melt.",
    "unmolten_grains": "Grains of the raw material survive because the melting temperature or time was insufficient for complete dissolution.",
    "crystalline_inclusions": "The faceted inclusions are undissolved crystalline stones carried over from the batch.",
    "surface_crystallisation": "Crystallisation starts at the surface because the heat treatment lies below the temperature at which bulk nucleation becomes effective.",
    "bulk_crystallisation": "Holding the glass close to its crystallisation temperature allows crystals to nucleate and grow throughout the bulk.",
    "dendrites": "At this temperature above the crystallisation peak the growth rate is high and the crystals grow as dendrites.",
    "phase_separation_droplet": "The heat treatment lies inside the miscibility gap, so the glass separates into two phases by nucleation and growth of droplets.",
    "phase_separation_interconnected": "The heat treatment lies inside the miscibility gap and close to the critical composition, so the glass separates spinodally into two interconnected phases.",
    "leached_layer": "The leached layer forms by ion exchange and selective dissolution during the corrosion test.",
    "scratches": "The scratches remain from the final polishing step and are not related to the thermal history.",
    "fracture_surface": "The size of the mirror relates to the fracture stress through the mirror constant.",
    "clean_glass": "No crystals, bubbles or cracks are found, showing that the processing produced a homogeneous glass.",
}
FIRST_NAMES = [
    "A.",
    "B.",
    "C.",
    "D.",
    "E.",
    "F.",
    "H.",
    "J.",
    "K.",
    "L.",
    "M.",
    "N.",
    "P.",
    "R.",
    "S.",
    "T.",
    "Y.",
    "Z.",
]
LAST_NAMES = [
    "Almeida",
    "Berger",
    "Chen",
    "Dubois",
    "Eriksson",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Oliveira",
    "Petrov",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Urban",
    "Varga",
    "Wagner",
    "Xu",
    "Yilmaz",
    "Zhang",
    "Novak",
    "Richter",
    "Sato",
    "Kumar",
    "Mendes",
]
AFFILIATIONS = [
    "Institute of Glass Science, University of Northbridge",
    "Department of Materials, Eastfield Technical University",
    "Laboratory of Amorphous Materials, Westlake Institute of Technology",
    "Glass and Ceramics Group, Southgate University",
    "Centre for Functional Glasses, Riverside Polytechnic",
]
JOURNALS = [
    "Journal of Synthetic Glass Science",
    "Synthetic Non-Crystalline Solids",
    "Glass Technology Letters (synthetic)",
    "International Journal of Applied Glass (synthetic)",
    "Ceramics and Glass Reports (synthetic)",
]

_TITLES = {
    "crystallisation": [
        "Crystallisation kinetics and microstructure of a {fam} glass",
        "Surface and bulk crystallisation of {fam} glass during isothermal heat treatment",
        "Devitrification of a {fam} glass near its crystallisation temperature",
    ],
    "corrosion": [
        "Aqueous corrosion of a {fam} glass in acidic, neutral and alkaline media",
        "Formation of leached layers on {fam} glass during static corrosion tests",
        "Chemical durability of a {fam} glass: leached layers and surface morphology",
    ],
    "melting": [
        "Effect of melting temperature and time on bubbles and unmolten grains in a {fam} glass",
        "Melting defects in laboratory {fam} glasses: bubbles, stones and batch relicts",
        "Homogeneity of {fam} glass melts as a function of melting conditions",
    ],
    "quenching": [
        "Quench cracking and fractography of {fam} glasses",
        "Thermal stress cracking in rapidly quenched {fam} glass",
        "Cooling rate, residual stress and fracture in a {fam} glass",
    ],
    "phase_separation": [
        "Phase separation in a sodium borosilicate glass heat treated in the miscibility gap",
        "Coarsening of phase separated microstructures in borosilicate glass",
        "Liquid immiscibility and microstructure of a borosilicate glass",
    ],
}
_INTRO = [
    "Glasses of the {fam} family are used in containers, windows, laboratory ware and technical applications, and their microstructure controls many of their properties.",
    "The properties of a glass depend not only on its composition but also on its thermal history, from melting and forming to annealing and any later heat treatment.",
    "Scanning electron microscopy is one of the most direct ways to reveal defects such as bubbles, stones, cracks and crystals in glasses.",
    "Defects that form during melting and cooling reduce the strength and the optical quality of glass products and are costly to remove later.",
    "A quantitative description of the microstructure therefore requires both careful sample preparation and calibrated imaging.",
    "Despite many studies, the link between processing conditions and the resulting microstructure is still discussed for many compositions.",
    "Heat treatments close to the glass transition relax residual stresses, whereas treatments near the crystallisation temperature may cause devitrification.",
    "Corrosion by aqueous solutions proceeds by ion exchange, hydrolysis of the network and the formation of an altered surface layer.",
    "Liquid immiscibility is common in borate and silicate systems and produces droplet or interconnected microstructures on a submicrometre scale.",
    "Fractography of glass relies on the characteristic mirror, mist and hackle markings that surround the fracture origin.",
    "In this work we combine thermal analysis, X ray diffraction and scanning electron microscopy to relate processing and microstructure.",
    "The present study focuses on a {fam} glass with the nominal composition given in Table{nb}1.",
    "Our aim is to provide a consistent set of observations that can serve as a reference for later work.",
    "The samples were chosen so that only one processing parameter changes at a time.",
]
_THEME_INTRO = {
    "crystallisation": "Controlled crystallisation converts a glass into a glass ceramic, but uncontrolled devitrification degrades transparency and strength.",
    "corrosion": "The chemical durability of glass is important for containers, pharmaceutical packaging and the immobilisation of nuclear waste.",
    "melting": "Incomplete melting leaves relicts of the raw materials, while insufficient fining leaves gas bubbles in the glass.",
    "quenching": "Rapid cooling builds up thermal stresses that can crack a glass unless they are relieved by annealing.",
    "phase_separation": "Sodium borosilicate glasses separate into silica rich and borate rich phases when heat treated inside the miscibility gap.",
}


def pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def phrase(phenomenon: str, rng: np.random.Generator) -> str:
    return pick(rng, _PHRASES[phenomenon])


def title(theme: str, family: str, rng: np.random.Generator) -> str:
    return pick(rng, _TITLES[theme]).format(fam=family)


def authors(rng: np.random.Generator) -> list[str]:
    n = int(rng.integers(2, 6))
    idx = rng.choice(len(LAST_NAMES), size=n, replace=False)
    return [f"{pick(rng, FIRST_NAMES)} {LAST_NAMES[i]}" for i in idx]


def abstract(
    theme: str, family: str, samples: list[dict], rng: np.random.Generator
) -> str:
    parts = [
        f"We report on the microstructure of a {family} glass prepared under {len(samples)} different processing conditions.",
        _THEME_INTRO[theme],
        "Scanning electron microscopy, X ray diffraction and differential scanning calorimetry were used to characterise the samples.",
        "The micrographs show how each processing step changes the glass, and the observed features are explained by the thermal and chemical history.",
        "The results provide practical guidance for the preparation of defect free glasses.",
    ]
    return " ".join(parts)


def introduction(theme: str, family: str, rng: np.random.Generator) -> list[str]:
    pool = [s.format(fam=family, nb=NBSP) for s in _INTRO]
    order = rng.permutation(len(pool) - 3)
    first = [_THEME_INTRO[theme]] + [pool[i] for i in order[:4]]
    second = [pool[i] for i in order[4:8]] + [pool[-3]]
    third = [
        pool[-2],
        pool[-1],
        "The paper is organised as follows: the experimental procedures are described first, followed by the results and their discussion.",
    ]
    return [" ".join(first), " ".join(second), " ".join(third)]


def composition_text(comp: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in comp.items()) + " (mol%)"


def methods(
    samples: list[dict], rng: np.random.Generator, table_cite: str
) -> list[tuple[str, str]]:
    """(subheading, paragraph) pairs for the experimental section."""
    h0 = samples[0]
    comp, melt = h0["composition"], h0["melting"]
    paras = []
    melt_temps = sorted({s["melting"]["temperature_C"] for s in samples})
    melt_desc = (
        f"melted at {melt['temperature_C']} °C for {melt['time_h']:g} h"
        if len(melt_temps) == 1
        else "melted at "
        + ", ".join(
            f"{s['melting']['temperature_C']} °C for {s['melting']['time_h']:g} h"
            for s in samples
        )
    )
    p = (
        f"Glass with the nominal composition {composition_text(comp)} was prepared from reagent grade SiO2, carbonates and, where needed, "
        f"H3BO3, Al2O3 and MgO ({table_cite}). Batches of 100 g were mixed in an agate mortar and {melt_desc} in a {melt['crucible']} crucible in an electric furnace. "
        f"The melts were stirred once with a silica rod to improve homogeneity."
    )
    quenches = {s["quench"]["method"] for s in samples}
    q = (
        "The melts were cast onto a preheated steel plate"
        if quenches == {"steel plate"}
        else (
            "Depending on the sample, the melts were quenched in water, pressed between twin rollers or cast onto a steel plate"
        )
    )
    anneal = next((s["anneal"] for s in samples if s["anneal"]), None)
    if anneal:
        q += f", and the cast glasses were annealed at {anneal['temperature_C']} °C for {anneal['time_h']:g} h and cooled at 1 K/min to room temperature."
    else:
        q += ", and none of the quenched glasses was annealed."
    paras.append(("Glass preparation", p + " " + q))
    treat = []
    for s in samples:
        if s["heat_treatment"]:
            ht = s["heat_treatment"]
            treat.append(
                f"sample {s['sample_id']} was heat treated at {ht['temperature_C']} °C for {ht['time_h']:g} h"
            )
        if s["corrosion"]:
            c = s["corrosion"]
            treat.append(
                f"sample {s['sample_id']} was immersed in {c['medium']} at {c['temperature_C']} °C for {c['time_d']} days"
            )
    if treat:
        text = (
            "Polished plates of 10 mm by 10 mm were used for the treatments: "
            + "; ".join(treat)
            + ". Heating and cooling rates were 10 K/min, and the furnace temperature was checked with a calibrated thermocouple."
        )
        corr = [s for s in samples if s["corrosion"]]
        if corr:
            text += (
                " The corrosion tests followed a static protocol with a surface area to volume ratio of 10 m\u207b\u00b9".replace(
                    "\u207b\u00b9", " 1/m"
                )
                + "; after the test the samples were rinsed in ethanol, embedded in epoxy resin and polished in cross-section."
            )
        etched = [s for s in samples if s["etching"]]
        if etched:
            e = etched[0]["etching"]
            text += f" To reveal the microstructure, the samples were etched in {e['agent']} for {e['time_s']} s before imaging."
        paras.append(("Heat treatment and corrosion", text))
    paras.append(
        (
            "Characterisation",
            (
                "Differential scanning calorimetry (DSC) was performed on powders of 20 mg in platinum pans at 10 K/min under nitrogen. "
                "X ray diffraction (XRD) patterns were recorded with Cu K alpha radiation between 10 and 60 degrees two theta with a step of 0.02 degrees. "
                "Scanning electron microscopy (SEM) was carried out on carbon coated samples in secondary electron mode at accelerating voltages between 2 and 20 kV "
                "and working distances between 4 and 15 mm; magnifications refer to a 127 mm wide display, and all micrographs carry a calibrated scale bar. "
                "Fracture surfaces were imaged without polishing."
            ),
        )
    )
    return paras


def sample_phrase(h: dict) -> str:
    fam = h["family"]
    desc = h["description"]
    return (
        f"the {fam} glass {desc}"
        if not desc.startswith(
            ("as ", "polished", "water", "roller", "plate", "annealed")
        )
        else f"the {desc} ({fam})"
    )


def sem_caption(prefix: str, panels: list[dict], rng: np.random.Generator) -> str:
    """Caption naming every phenomenon in every panel's truth."""

    def shows(truth: dict) -> str:
        names = [phrase(p, rng) for p in truth["phenomena"]]
        return (
            names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        )

    if len(panels) == 1:
        p = panels[0]
        t = p["truth"]
        lead = pick(
            rng, ["SEM micrograph of", "Secondary electron image of", "SEM image of"]
        )
        text = f"{lead} {sample_phrase(p['history'])} showing {shows(t)}"
        if rng.random() < 0.4:
            text += f" ({t['kv']:g} kV, {int(t['magnification'])}x)"
        return f"{prefix} {text}."
    lead = pick(
        rng, ["SEM micrographs of", "Secondary electron images of", "SEM images of"]
    )
    parts = [
        f"({p['label']}) {sample_phrase(p['history'])}, showing {shows(p['truth'])}"
        for p in panels
    ]
    return f"{prefix} {lead} the samples: " + "; ".join(parts) + "."


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def describe_truth(truth: dict, rng: np.random.Generator) -> str:
    """One or two sentences with numbers taken from the truth record."""
    feats = truth["features"]
    out = []
    for p in truth["phenomena"]:
        ftype = {
            "cracks": "crack",
            "crack_network": "crack_network",
            "pores": "pore",
            "bubbles": "bubble",
            "unmolten_grains": "unmolten_grain",
            "crystalline_inclusions": "crystalline_inclusion",
            "surface_crystallisation": "surface_crystal_layer",
            "bulk_crystallisation": "bulk_crystal",
            "dendrites": "dendrite",
            "leached_layer": "leached_layer",
            "scratches": "scratch",
            "fracture_surface": "fracture_mirror",
        }.get(p, p)
        sizes = [f["size_um"] for f in feats if f["type"] == ftype and "size_um" in f]
        n = len([f for f in feats if f["type"] == ftype])
        if (
            p
            in (
                "pores",
                "bubbles",
                "unmolten_grains",
                "crystalline_inclusions",
                "bulk_crystallisation",
            )
            and sizes
        ):
            word = {
                "pores": "pores",
                "bubbles": "bubbles",
                "unmolten_grains": "unmolten grains",
                "crystalline_inclusions": "inclusions",
                "bulk_crystallisation": "crystals",
            }[p]
            out.append(
                f"{n} {word} are visible in the field of view, with diameters between {_fmt(min(sizes))} and {_fmt(max(sizes))} µm."
            )
        elif p in ("cracks", "crack_network", "dendrites", "scratches") and sizes:
            word = {
                "cracks": "the cracks",
                "crack_network": "the crack network",
                "dendrites": "the dendrites",
                "scratches": "the scratches",
            }[p]
            out.append(f"In this field {word} extend over up to {_fmt(max(sizes))} µm.")
        elif p in ("leached_layer", "surface_crystallisation") and sizes:
            word = (
                "leached layer"
                if p == "leached_layer"
                else "crystallised surface layer"
            )
            out.append(f"The {word} is about {_fmt(sizes[0])} µm thick.")
        elif p.startswith("phase_separation") and sizes:
            out.append(
                f"The characteristic size of the separated phases is about {sizes[0] * 1000:.0f} nm."
            )
        elif p == "fracture_surface" and sizes:
            out.append(f"The mirror radius is about {_fmt(sizes[0])} µm.")
        elif p == "clean_glass":
            out.append("The surface is smooth and homogeneous.")
    return " ".join(out)


def cause(phenomenon: str) -> str:
    return _CAUSES[phenomenon]


def references(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for k in range(n):
        names = ", ".join(
            f"{pick(rng, FIRST_NAMES)} {pick(rng, LAST_NAMES)}"
            for _ in range(int(rng.integers(1, 4)))
        )
        year = int(rng.integers(1975, 2024))
        out.append(
            f"[{k + 1}] {names}, {pick(rng, JOURNALS)} {int(rng.integers(5, 600))} ({year}) {int(rng.integers(1, 900))}."
        )
    return out
