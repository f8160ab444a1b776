"""Domain rules for glass SEM question answering: the feature vocabulary, a phrase lexicon, and the
offline generator that writes QA records from a panel's caption and the paper's own sentences.

The offline generator needs no LLM and no key, so the main job runs anywhere. It is honest about what
it is: every record says ``generator = "offline-rules/<version>"``, and its answers are assembled
from sentences of the paper (quoted as evidence) and a handful of templates. It is a baseline and a
smoke test for everything downstream, not a substitute for GPT-4's questions.

The vocabulary is also the contract for LLM output: ``features`` must be names from ``FEATURES``
(or ``other:<words>``), ``defect.types`` a subset of ``DEFECT_FEATURES``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from glassllava.citations import find_figure_mentions

RULES_VERSION = "2"  # 2: a bare panel marker shares the next description (evidence "(a)" was ungrounded)

# feature -> what an expert calls it in an answer
FEATURES: dict[str, str] = {
    "crack": "cracks",
    "crack_network": "a crack network",
    "pore": "pores",
    "bubble": "gas bubbles",
    "unmolten_grain": "unmolten raw-material grains",
    "crystalline_inclusion": "crystalline inclusions (stones)",
    "surface_crystallisation": "surface crystallisation",
    "bulk_crystallisation": "crystals in the bulk (devitrification)",
    "dendrite": "dendritic crystals",
    "phase_separation_droplet": "droplet-type phase separation",
    "phase_separation_interconnected": "interconnected (spinodal-like) phase separation",
    "leached_layer": "a leached (corroded) surface layer",
    "scratch": "polishing scratches",
    "fracture_markings": "fracture-surface markings (mirror, mist, hackle)",
    "homogeneous_glass": "homogeneous, defect-free glass",
}
# Unwanted in a glass: they weaken it, scatter light or betray a processing fault. Phase separation
# and fracture markings are microstructure and fractography, not defects in themselves.
DEFECT_FEATURES = frozenset(
    {
        "crack",
        "crack_network",
        "pore",
        "bubble",
        "unmolten_grain",
        "crystalline_inclusion",
        "surface_crystallisation",
        "bulk_crystallisation",
        "dendrite",
        "leached_layer",
        "scratch",
    }
)
CONTEXT_TYPES = ("material", "composition", "processing", "imaging", "aim")

# Longest, most specific phrases first: a span matched once is not matched again.
_LEXICON: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern, re.I))
    for name, pattern in [
        ("crack_network", r"crack[- ]networks?(?: of (?:\w+ ){0,4}?cracks)?|networks? of (?:radial |ring )?cracks|craz(?:e|ing)|map[- ]cracking"),
        ("fracture_markings", r"fracture (?:mirror|origin|surface)|\bmirror\b|\bmist\b|hackle|wallner lines?"),
        ("surface_crystallisation", r"surface[- ]crystalli[sz]\w*|surface crystals?|crystalli[sz]ed (?:surface )?layer|columnar (?:surface )?crystals?"),
        ("dendrite", r"dendrit\w*(?: crystals?)?"),
        ("phase_separation_interconnected", r"interconnected|spinodal\w*|bicontinuous"),
        ("phase_separation_droplet", r"droplets?|binodal"),
        ("unmolten_grain", r"unmolten|un-?melted|undissolved (?:batch|raw|quartz|sand)\w*|batch (?:grains?|relicts?)|relicts?"),
        ("bubble", r"(?:gas )?bubbles?|\bseeds\b|blisters?|gas inclusions?"),
        ("crystalline_inclusion", r"(?:crystalline |faceted )?inclusions?|\bstones?\b"),
        ("leached_layer", r"leach\w*|gel layer|corrosion layer|corroded layer|altered (?:surface )?layer|hydrated layer"),
        ("bulk_crystallisation", r"bulk crystalli[sz]\w*|spherulit\w*|devitrifi\w*|crystals? (?:dispersed|in the bulk)|crystals?\b|crystalli[sz]ation"),
        ("pore", r"\bpores?\b|porosity|\bvoids?\b|cavit(?:y|ies)"),
        ("crack", r"micro-?cracks?|\bcrack(?:s|ed|ing)?\b|fissures?"),
        ("scratch", r"scratch\w*"),
        ("homogeneous_glass", r"homogeneous|featureless|free of defects|defect-free|clean glass"),
    ]
]
# A negation opens a scope that runs to the end of the clause: "No crystals, bubbles or cracks are found".
_NEGATION = re.compile(r"\b(?:no|not|without|free of|absence of|neither|nor|lack of|devoid of)\b", re.I)
_SCOPE_END = re.compile(r"[.;:]|,\s*(?:showing|indicating|which|whereas|while|but|so that)\b|\bbut\b|\bwhereas\b", re.I)
_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z0-9(\[])")
_ABBREVIATION = re.compile(r"(?:\b(?:Figs?|Eqs?|Refs?|Tab|No|ca|approx|vs|al|e\.g|i\.e|cf|resp)|\b[A-Z])\.$")
_PANEL_MARK = re.compile(r"\(([a-h])\)")
_KV = re.compile(r"(\d+(?:\.\d+)?)\s*kV\b")
_MAG = re.compile(r"(\d[\d,]*)\s*[x×]\b|[x×]\s*(\d[\d,]*)")
_FAMILY = re.compile(
    r"\b(soda[- ]lime(?:[- ]silica)?|(?:sodium |alkali )?borosilicate|(?:alkali |alkaline earth )?aluminosilicate|"
    r"phosphate|chalcogenide|fused silica|silicate|bioactive|lithium disilicate|fluoride|tellurite|borate|germanate|"
    r"metallic)\s+glass(?:es)?",
    re.I,
)
_PROCESSING = re.compile(
    r"\b(?:melted|quenched|annealed|heat[- ]treated|corroded|etched|cast|polished|sintered|drawn|tempered|"
    r"crystalli[sz]ed|leached|ion[- ]exchanged|fractured)\b(?:(?![;:]|\.\s|\.$|,?\s+showing\b|,\s*(?:which|where))[^)])*",
    re.I,
)
_AIM = re.compile(r"\b(?:in this (?:work|study|paper)|we (?:report|study|investigate|combine|examine)|(?:our|the) aim|the present study)\b", re.I)
_IMAGING = re.compile(r"\b(?:SEM|scanning electron|secondary electron|back-?scatter|kV|working distance|magnification)", re.I)
_COMPOSITION = re.compile(r"mol\s?%|wt\s?%|composition", re.I)
_MEASUREMENT = re.compile(r"\d\s*(?:µm|um|nm|mm|%|vol|wt)|\b(?:visible|seen|observed|measured|diameters?|thick|size)\b", re.I)
_CAUSAL = re.compile(
    r"\b(?:because|attributed|due to|result of|caused|owing to|so that|, so\b|therefore|thus|leads? to|results? in|"
    r"allows|forms? by|remain from|survive|relates? to|lies (?:inside|within|below|above))\b",
    re.I,
)


def sentences(text: str) -> list[str]:
    """Split at sentence ends, but not after "Fig.", "et al.", "e.g." or an initial."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if _ABBREVIATION.search(text[start : m.start() + 1]):
            continue
        out.append(text[start : m.start() + 1].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def find_features(text: str) -> list[str]:
    """Features named (and not negated) in ``text``, in order of first mention."""
    taken: list[tuple[int, int]] = []
    found: list[tuple[int, str]] = []
    negated = _negated_spans(text)
    for name, pattern in _LEXICON:
        for m in pattern.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            taken.append(m.span())
            if any(s <= m.start() < e for s, e in negated):
                continue
            found.append((m.start(), name))
    out: list[str] = []
    for _, name in sorted(found):
        if name not in out:
            out.append(name)
    if len(out) > 1 and "homogeneous_glass" in out:  # "a homogeneous glass with bubbles" is not defect-free
        out.remove("homogeneous_glass")
    return out


def _negated_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _NEGATION.finditer(text):
        end = _SCOPE_END.search(text, m.end())
        spans.append((m.start(), end.start() if end else len(text)))
    return spans


def defect_types(features: list[str]) -> list[str]:
    return [f for f in features if f in DEFECT_FEATURES]


def panel_caption(caption: str, panel_label: str | None) -> str:
    """The part of a multi-panel caption about one panel: "... (a) X; (b) Y" -> "(a) X" for "a".

    Always a verbatim substring of the caption (it is quoted as evidence). A caption without
    markers, or without this panel's marker, is returned whole."""
    marks = list(_PANEL_MARK.finditer(caption))
    if not panel_label or not marks:
        return caption.strip()
    for i, m in enumerate(marks):
        if m.group(1) == panel_label.lower():
            j = i + 1
            # "(a) (b) SEM images of ...", "(a) and (b) ...": a marker with no words of its own shares the
            # description that follows the next one (a bare "(a)" is not a clause anyone can quote)
            while j < len(marks) and not _own_words(caption[m.end() : marks[j].start()]):
                j += 1
            end = marks[j].start() if j < len(marks) else len(caption)
            return caption[m.start() : end].strip(" ;,")
    return caption.strip()


def _own_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]{2,}|\d+", text) if w.lower() not in ("and", "or")]


@dataclass
class PanelText:
    """What the offline rules (and the LLM prompt) know about one panel, each piece with its source."""

    panel_id: str
    figure_label: str
    panel_label: str | None
    caption: str  # the whole caption ("caption" source)
    paragraphs: dict[int, str] = field(default_factory=dict)  # paragraph index -> text: citing, methods, aim
    title: str = ""

    def sources(self) -> dict[str, str]:
        out = {"caption": self.caption}
        out.update({f"paragraph:{i}": t for i, t in self.paragraphs.items()})
        return out


@dataclass
class Facts:
    material: str | None
    processing: str | None
    processing_adjective: bool  # "roller quenched" (goes before "glass") vs "melted at ..." (after)
    composition: tuple[str, str] | None  # (source, sentence)
    imaging: str | None
    imaging_source: tuple[str, str] | None
    aim: tuple[str, str] | None
    features: list[str]
    describing: list[tuple[str, str]]  # (source, sentence) about this panel
    causes: list[tuple[str, str]]


def _cites_panel(sentence: str, figure_label: str, panel_label: str | None) -> bool | None:
    """True if the sentence cites only this figure (and panel, when it names panels); None if it cites none."""
    mentions = find_figure_mentions(sentence)
    if not mentions:
        return None
    # A sentence comparing this figure with others ("Figs. 2 and 3 show ...") is about neither alone.
    return all(
        m.figure_label == figure_label and (not m.panel_labels or not panel_label or panel_label in m.panel_labels)
        for m in mentions
    )


def extract_facts(panel: PanelText) -> Facts:
    clause = panel_caption(panel.caption, panel.panel_label)
    features = find_features(clause)
    describing: list[tuple[str, str]] = [("caption", clause)]
    causes: list[tuple[str, str]] = []
    composition = imaging_source = aim = None
    for idx, text in panel.paragraphs.items():
        src = f"paragraph:{idx}"
        in_run = False
        for s in sentences(text):
            if len(s.split()) < 4:  # a fragment where a paragraph breaks across columns or pages
                continue
            cited = _cites_panel(s, panel.figure_label, panel.panel_label)
            if cited is not None:
                in_run = cited  # a run of sentences about this panel ends at the next citation
                if cited:
                    describing.append((src, s))
                continue
            if in_run and len(describing) + len(causes) < 8:
                # after the citing sentence: measurements describe; other sentences explain
                explains = _CAUSAL.search(s) or not _MEASUREMENT.search(s)
                (causes if explains else describing).append((src, s))
            if composition is None and _COMPOSITION.search(s) and re.search(r"\d", s):
                composition = (src, s)
            if imaging_source is None and _IMAGING.search(s) and _KV.search(s):
                imaging_source = (src, s)
            if aim is None and _AIM.search(s):
                aim = (src, s)
    if not features:  # a caption that names no feature: fall back to the sentences about this panel
        for _, s in describing[1:]:
            features += [f for f in find_features(s) if f not in features]
    if not causes and features:  # the paper may explain a feature once, next to another figure
        causes = [
            (f"paragraph:{idx}", s)
            for idx, text in panel.paragraphs.items()
            for s in sentences(text)
            if _CAUSAL.search(s) and not find_figure_mentions(s) and set(find_features(s)) & set(features)
        ][:2]
    material_m = _FAMILY.search(clause) or _FAMILY.search(panel.caption) or _FAMILY.search(panel.title)
    processing, processing_adjective = _processing(clause)
    kv, mag = _KV.search(clause), _MAG.search(clause)
    imaging = None
    if kv or mag:
        parts = []
        if kv:
            parts.append(f"{kv.group(1)} kV")
        if mag:
            parts.append(f"{(mag.group(1) or mag.group(2)).replace(',', '')}x magnification")
        imaging = ", ".join(parts)
    elif imaging_source:
        imaging = _imaging_from_methods(imaging_source[1])
    return Facts(
        material=material_m.group(0).lower() if material_m else None,
        processing=processing,
        processing_adjective=processing_adjective,
        composition=composition,
        imaging=imaging,
        imaging_source=imaging_source,
        aim=aim,
        features=features,
        describing=describing,
        causes=causes,
    )


# "the roller quenched glass (aluminosilicate)", "the as annealed glass": the history is an adjective
_NAMED_SAMPLE = re.compile(r"\bthe ((?:[\w-]+ ){0,4}?(?:quenched|annealed|cast|polished|etched|corroded|treated|tempered)(?: [\w-]+){0,2}?) glass\b", re.I)


def _processing(clause: str) -> tuple[str | None, bool]:
    """The sample's processing history as the caption states it, and whether it is an adjective:
    ("melted at 1480 °C for 0.5 h", False), ("roller quenched", True)."""
    m = _PROCESSING.search(clause)
    named = _NAMED_SAMPLE.search(clause)
    if named and (not m or named.start() <= m.start()):
        return named.group(1).strip(), True
    return (m.group(0).strip(" ,)"), False) if m else (None, False)


_MODE = re.compile(r"secondary[- ]electron|back-?scatter(?:ed)?[- ]electron|\bBSE\b|\bSE\b|in-?lens", re.I)
_KV_RANGE = re.compile(r"(\d+(?:\.\d+)?)(?:\s*(?:and|to|-|–)\s*(\d+(?:\.\d+)?))?\s*kV\b")


def _imaging_from_methods(sentence: str) -> str | None:
    """"... in secondary electron mode at accelerating voltages between 2 and 20 kV" -> "secondary electron mode, 2-20 kV"."""
    mode, kv = _MODE.search(sentence), _KV_RANGE.search(sentence)
    parts = []
    if mode:
        parts.append(mode.group(0).lower().replace("-", " ") + " mode")
    if kv:
        parts.append(f"{kv.group(1)}-{kv.group(2)} kV" if kv.group(2) else f"{kv.group(1)} kV")
    return ", ".join(parts) or None


_FIGURE_REF = re.compile(r"\s*\((?:see )?(?:Figs?\.|Figures?)\s*[^)]*\)|^(?:Figs?\.|Figures?)\s*\S+\s+(?=shows?\b)", re.I)


def _without_figure_refs(sentence: str) -> str:
    """A paper's sentence as an answer: "(Fig. 3a)" dropped, "Fig. 3b shows" -> "The image shows"."""
    out = _FIGURE_REF.sub(lambda m: "" if m.group(0).lstrip().startswith("(") else "The image ", sentence)
    return re.sub(r"\s+([.,;])", r"\1", out).strip()


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rsplit(" ", 1)[0] + "…"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _feature_phrase(features: list[str]) -> str:
    return _join([FEATURES[f] for f in features]) if features else "no distinct features"


def _pick(options: list[str], key: str) -> str:
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def _context(level: str, facts: Facts) -> tuple[str, list[str], list[tuple[str, str]]]:
    """The context sentence put into a question at ``level``, its context types, and its evidence."""
    if level == "none":
        return "", [], []
    material = facts.material or "a glass"
    article = "" if material.startswith("a ") else "an " if material[0] in "aeiou" else "a "
    types, parts, evidence = ["material"], [f"This SEM image shows {article}{material}"], []
    if level in ("moderate", "high") and facts.processing:
        if not facts.processing_adjective:  # "melted at 1480 °C for 0.5 h"
            parts[0] += f" {facts.processing}"
        else:  # "roller quenched", "as annealed": an adjective
            parts[0] = f"This SEM image shows {'an' if facts.processing[0] in 'aeiou' else 'a'} {facts.processing} {material.removeprefix('a ')}"
        types.append("processing")
    if level == "high":
        if facts.composition:
            evidence.append(facts.composition)
            types.append("composition")
        if facts.imaging:
            parts.append(f"It was imaged in the SEM ({facts.imaging})")
            types.append("imaging")
        if facts.aim:
            parts.append("The study's aim: " + _shorten(facts.aim[1], 220).rstrip("."))
            evidence.append(facts.aim)
            types.append("aim")
    return ". ".join(parts) + ". ", types, evidence


_QUESTIONS = {
    "description": ["What does this SEM image show?", "Describe this SEM micrograph.", "What can be seen in this SEM image?"],
    "feature_identification": [
        "Which microstructural features can you identify in this image?",
        "Identify the main features visible in this micrograph.",
        "What microstructural features are present?",
    ],
    "defect_detection": [
        "Does the image show any defects or anomalies? If so, which?",
        "Is this glass free of defects? Name any defect you see.",
        "Are there defects or anomalies in this micrograph?",
    ],
    "complex_reasoning": [
        "Explain how the processing history leads to the microstructure seen here.",
        "Relate what the image shows to how the glass was made and treated.",
        "Why does the glass look like this, given its processing?",
    ],
}


def generate(panel: PanelText, slots: list[str]) -> list[dict]:
    """QA records for one panel, one per slot "<type>@<level>", in the LLM reply format."""
    facts = extract_facts(panel)
    defects = defect_types(facts.features)
    feature_text = _feature_phrase(facts.features)
    detail = [_without_figure_refs(s) for src, s in facts.describing[1:3]]
    records = []
    for slot in slots:
        qtype, _, level = slot.partition("@")
        context, context_types, context_evidence = _context(level, facts)
        question = context + _pick(_QUESTIONS[qtype], panel.panel_id + slot)
        evidence = [facts.describing[0]]
        if qtype == "description":
            answer = f"The micrograph shows {feature_text}."
            if detail:
                answer += " " + " ".join(detail[:1])
                evidence.append(facts.describing[1])
        elif qtype == "feature_identification":
            answer = f"The features visible are {feature_text}."
            if facts.features and detail:
                answer += " " + detail[0]
                evidence.append(facts.describing[1])
        elif qtype == "defect_detection":
            if defects:
                answer = f"Yes. The image shows {_feature_phrase(defects)}."
            elif facts.features:
                answer = f"No defect is visible: the image shows {feature_text}, which is not a defect in itself."
            else:
                answer = "No defect or anomaly can be identified in this image."
        else:  # complex_reasoning
            answer = f"The micrograph shows {feature_text}."
            if facts.processing:
                answer += f" The sample is the {facts.processing} glass." if facts.processing_adjective else f" The glass was {facts.processing}."
            if facts.causes:
                answer += " " + " ".join(_without_figure_refs(s) for _, s in facts.causes[:2])
                evidence += facts.causes[:2]
            else:
                answer += " The paper gives no explicit cause for these features."
        records.append(
            {
                "question": question,
                "answer": answer,
                "question_type": qtype,
                "complexity": "complex" if qtype == "complex_reasoning" or level == "high" else "simple",
                "context_level": level,
                "context_types": context_types,
                "features": list(facts.features),
                "defect": {"present": bool(defects), "types": defects},
                "evidence": [{"source": s, "text": t} for s, t in _unique(evidence + context_evidence)],
            }
        )
    return records


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))
