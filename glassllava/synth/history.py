"""Glass families and the processing histories of the samples a synthetic paper studies.

Produces plain dicts (JSON-ready): composition in mol%, characteristic temperatures, melting,
quenching, annealing, heat treatment, etching, corrosion test and the surface that was imaged.
``micrographs.history_tendencies`` turns a history into what its micrographs show.
"""

from __future__ import annotations

import numpy as np

# Characteristic temperatures are typical literature values, rounded; crystal phases and XRD peak
# positions (2-theta, Cu K-alpha) are approximate and only need to look plausible.
FAMILIES: dict[str, dict] = {
    "soda-lime": {
        "base": {"SiO2": 72.0, "Na2O": 14.0, "CaO": 9.0, "MgO": 4.0, "Al2O3": 1.0},
        "Tg_C": 560,
        "Tx_C": 740,
        "Tm_C": 1030,
        "melt_lo_C": 1400,
        "melt_hi_C": 1520,
        "crystal": "devitrite",
        "peaks": [(21.8, 0.5), (26.9, 1.0), (28.4, 0.6), (31.7, 0.4), (41.3, 0.3)],
    },
    "borosilicate": {
        "base": {"SiO2": 70.0, "B2O3": 20.0, "Na2O": 7.0, "Al2O3": 3.0},
        "Tg_C": 530,
        "Tx_C": 780,
        "Tm_C": 1100,
        "melt_lo_C": 1420,
        "melt_hi_C": 1560,
        "miscibility_gap_C": (550, 750),
        "crystal": "cristobalite",
        "peaks": [(21.9, 1.0), (28.4, 0.15), (31.4, 0.2), (36.1, 0.25), (48.6, 0.1)],
    },
    "lithium disilicate": {
        "base": {"SiO2": 66.0, "Li2O": 32.0, "P2O5": 1.0, "K2O": 1.0},
        "Tg_C": 460,
        "Tx_C": 630,
        "Tm_C": 1030,
        "melt_lo_C": 1330,
        "melt_hi_C": 1460,
        "crystal": "lithium disilicate",
        "peaks": [(23.8, 0.7), (24.4, 1.0), (24.9, 0.8), (37.8, 0.3), (39.0, 0.2)],
    },
    "aluminosilicate": {
        "base": {"SiO2": 60.0, "Al2O3": 16.0, "MgO": 10.0, "CaO": 9.0, "Na2O": 5.0},
        "Tg_C": 760,
        "Tx_C": 990,
        "Tm_C": 1320,
        "melt_lo_C": 1520,
        "melt_hi_C": 1640,
        "crystal": "anorthite",
        "peaks": [(22.0, 0.4), (27.9, 1.0), (31.4, 0.3), (35.6, 0.2), (42.4, 0.2)],
    },
}

THEMES = ("crystallisation", "corrosion", "melting", "quenching", "phase_separation")
ACRONYM = {
    "soda-lime": "SLS",
    "borosilicate": "NBS",
    "lithium disilicate": "LS2",
    "aluminosilicate": "MAS",
}


def sample_composition(family: str, rng: np.random.Generator) -> dict[str, float]:
    """The family's base composition, each oxide varied by up to 8 % relative, renormalised to 100 mol%."""
    base = dict(FAMILIES[family]["base"])
    if (
        family == "borosilicate"
    ):  # spread B2O3 across the critical region so both morphologies occur
        base["B2O3"] = float(rng.uniform(12, 28))
        base["SiO2"] = 90.0 - base["B2O3"]
    comp = {k: v * rng.uniform(0.92, 1.08) for k, v in base.items()}
    total = sum(comp.values())
    comp = {k: round(100 * v / total, 1) for k, v in comp.items()}
    first = next(iter(comp))
    comp[first] = round(
        comp[first] + 100.0 - sum(comp.values()), 1
    )  # make the table add up exactly
    return comp


def sample_histories(theme: str, family: str, rng: np.random.Generator) -> list[dict]:
    """Two to four samples of one glass whose processing differs in the way ``theme`` studies."""
    props = _properties(family)
    comp = sample_composition(family, rng)
    acr = ACRONYM[family]
    melt_t = (
        int(rng.integers(props["melt_lo_C"] // 10 + 3, props["melt_hi_C"] // 10 - 1))
        * 10
    )
    melting = {
        "temperature_C": melt_t,
        "time_h": float(rng.choice([2.0, 3.0, 4.0])),
        "crucible": str(rng.choice(["platinum", "Pt/Rh", "alumina"])),
    }
    plate = {"method": "steel plate", "rate": "moderate"}
    anneal = {
        "temperature_C": props["Tg_C"] + int(rng.integers(-3, 2)) * 10,
        "time_h": float(rng.choice([1.0, 2.0, 4.0])),
    }

    def make(sample_id: str, description: str, **over) -> dict:
        h = {
            "sample_id": sample_id,
            "description": description,
            "family": family,
            "composition": comp,
            "properties": props,
            "melting": dict(melting),
            "quench": dict(plate),
            "anneal": dict(anneal),
            "heat_treatment": None,
            "etching": None,
            "corrosion": None,
            "surface": "polished",
        }
        h.update(over)
        return h

    tx = props["Tx_C"]
    if theme == "crystallisation":
        out = [make(f"{acr}-0", "as annealed glass")]
        for k, dt in enumerate(
            sorted(
                rng.choice(
                    [-60, -40, 0, 10, 40, 60],
                    size=int(rng.integers(2, 4)),
                    replace=False,
                )
            )
        ):
            t = int(tx + dt)
            hours = float(rng.choice([4.0, 8.0, 16.0, 24.0]))
            out.append(
                make(
                    f"{acr}-{t}",
                    f"heat treated at {t} °C for {hours:g} h",
                    heat_treatment={"temperature_C": t, "time_h": hours},
                )
            )
        return out
    if theme == "corrosion":
        out = [make(f"{acr}-P", "polished reference glass")]
        for kind, medium in [
            ("acid", "0.1 M HCl"),
            ("water", "deionised water"),
            ("alkaline", "0.1 M NaOH"),
        ][: int(rng.integers(2, 4))]:
            days = int(rng.choice([7, 14, 28, 56]))
            t = int(rng.choice([40, 60, 90]))
            out.append(
                make(
                    f"{acr}-{kind[0].upper()}{days}",
                    f"corroded in {medium} at {t} °C for {days} days",
                    corrosion={
                        "kind": kind,
                        "medium": medium,
                        "temperature_C": t,
                        "time_d": days,
                    },
                    surface="cross-section",
                )
            )
        return out
    if theme == "melting":
        lo = int(props["melt_lo_C"] - rng.integers(2, 6) * 10)
        hi = int(props["melt_hi_C"] + rng.integers(1, 5) * 10)
        return [
            make(
                f"{acr}-L",
                f"melted at {lo} °C for 0.5 h",
                melting={**melting, "temperature_C": lo, "time_h": 0.5},
            ),
            make(
                f"{acr}-H",
                f"melted at {hi} °C for 1 h",
                melting={**melting, "temperature_C": hi, "time_h": 1.0},
            ),
            make(f"{acr}-R", f"melted at {melt_t} °C for {melting['time_h']:g} h"),
        ]
    if theme == "quenching":
        water = {"method": "water", "rate": "rapid"}
        roller = {"method": "twin roller", "rate": "rapid"}
        return [
            make(f"{acr}-W", "water quenched glass", quench=water, anneal=None),
            make(f"{acr}-Q", "roller quenched glass", quench=roller, anneal=None),
            make(f"{acr}-A", "plate cast and annealed glass"),
            make(
                f"{acr}-F",
                "annealed glass fractured in four point bending",
                surface="fractured",
            ),
        ][: int(rng.integers(3, 5))]
    if theme == "phase_separation":
        etch = {
            "agent": str(rng.choice(["1 vol% HF", "2 vol% HF", "0.5 M HCl"])),
            "time_s": int(rng.choice([10, 20, 30, 60])),
        }
        gap = props["miscibility_gap_C"]
        upper = min(
            gap[1], props["Tx_C"] - 90
        )  # stay clear of crystallisation: this paper is about separation
        t = int(rng.integers(gap[0] // 10 + 3, upper // 10)) * 10
        out = [make(f"{acr}-0", "as annealed glass", etching=etch)]
        for hours in sorted(
            rng.choice(
                [2.0, 8.0, 24.0, 72.0], size=int(rng.integers(2, 4)), replace=False
            )
        ):
            out.append(
                make(
                    f"{acr}-{t}-{int(hours)}",
                    f"heat treated at {t} °C for {hours:g} h",
                    heat_treatment={"temperature_C": t, "time_h": float(hours)},
                    etching=etch,
                )
            )
        return out
    raise ValueError(f"unknown theme {theme!r}; allowed: {THEMES}")


def _properties(family: str) -> dict:
    fam = FAMILIES[family]
    props = {
        k: fam[k] for k in ("Tg_C", "Tx_C", "Tm_C", "melt_lo_C", "melt_hi_C", "crystal")
    }
    if "miscibility_gap_C" in fam:
        props["miscibility_gap_C"] = list(fam["miscibility_gap_C"])
    return props


def family_for_theme(theme: str, rng: np.random.Generator) -> str:
    if theme == "phase_separation":
        return "borosilicate"
    return str(rng.choice(list(FAMILIES)))
