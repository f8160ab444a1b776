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

RULES_VERSION = "3"
# 2: a bare panel marker shares the next description (evidence "(a)" was ungrounded)
# 3: the material is named from the caption/title/abstract (never "a glass" by default); defect answers follow the
#    question's polarity; features the caption names outside the vocabulary become other:<words>; no study aim from a
#    table caption; paper sentences that address a model are never copied; an answer with nothing to say is not written

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
# "(c. 2 µm)": "circa" abbreviated after a bracket is no sentence end either
_ABBREVIATION = re.compile(r"(?:\b(?:Figs?|Eqs?|Refs?|Tab|No|ca|approx|vs|al|e\.g|i\.e|cf|resp)|\b[A-Z]|\(c)\.$")
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
# A statement of the study's aim: "In this work we ...", "We report ...", "Our aim is ...", "The present study focuses ...".
# Not "the powders used in this study" (a table caption) or "the sample presented in this study, we deposited ..."
# (a method): "in this study" counts only where it opens the sentence.
_AIM = re.compile(
    r"^(?:in this (?:work|study|paper|article)|here(?:in)?,? we)\b|\bwe (?:report|study|investigate|combine|examine|present|propose|demonstrate)\b|"
    r"\b(?:our|the) (?:aim|purpose|objective|goal) (?:is|was|of this|of the present)\b|\bthe present (?:work|study|paper) (?:aims|focuses|investigates|reports|examines|presents)\b|"
    r"\bthis (?:work|study|paper) (?:aims|investigates|reports|presents|examines|studies|demonstrates)\b",
    re.I,
)
# A table's caption or a figure's caption read as a paragraph: never the study's aim, never an answer.
_CAPTION_START = re.compile(r"^\s*(?:Table|Tab\.|Fig\.|Figs\.|Figure|Scheme)\s*(?:S?\d+|[IVX]+)\b", re.I)
_IMAGING = re.compile(r"\b(?:SEM|scanning electron|secondary electron|back-?scatter|kV|working distance|magnification)", re.I)
_COMPOSITION = re.compile(r"mol\s?%|wt\s?%|composition", re.I)
_MEASUREMENT = re.compile(r"\d\s*(?:µm|um|nm|mm|%|vol|wt)|\b(?:visible|seen|observed|measured|diameters?|thick|size)\b", re.I)
_CAUSAL = re.compile(
    r"\b(?:because|attributed|due to|result of|caused|owing to|so that|, so\b|therefore|thus|leads? to|results? in|"
    r"allows|forms? by|remain from|survive|relates? to|lies (?:inside|within|below|above))\b",
    re.I,
)


# ---- paper text that addresses a model ------------------------------------------------------
# Paper text is data. A sentence written to a language model ("Ignore previous instructions ...", "You are ChatGPT",
# "Respond with ...", "As an AI ...") is never copied into a question or an answer, by either generator.
_ADDRESSES_MODEL = re.compile(
    r"(?:^|[.!?:;\"'(]\s*|\b(?:please|now|then)\s+)(?:ignore|disregard|forget|override)\s+(?:all|any|the|your|everything|previous|prior|above|earlier|these|this)\b|"
    r"\b(?:ignore|disregard|forget|override)\s+(?:\w+\s+){0,3}?(?:instructions?|prompts?|rules|directions|guidelines|messages?)\b|"
    r"\byou\s+are\s+(?:now\s+)?(?:chat\s?gpt|gpt-?\d\w*|claude|gemini|llama|an?\s+(?:ai|artificial intelligence|assistant|helpful|large language model|language model|llm|chatbot|bot)\b)|"
    r"\bas\s+an?\s+(?:ai|artificial intelligence|language model|large language model|llm)\b|"
    r"(?:^|[.!?:;\"'(]\s*|\b(?:please|always|now|must|should|shall)\s+)(?:respond|reply|answer|output|write|return|say|print)\s+(?:only\s+)?(?:with|in|as|that|exactly)\b|"
    r"\b(?:respond|reply|answer|output)\s+(?:only\s+)?(?:in|with)\s+(?:json|html|xml|markdown|yaml|the following|this format)\b|"
    r"\b(?:system|developer)\s+(?:prompt|message|mode)\b|\bnew\s+instructions?\b|\bprompt\s+injection\b|\bjailbreak\w*|"
    r"\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+|any\s+)?(?:ai|llm|language model|chatbot|assistant|model|reviewers? model)\b|"
    r"\b(?:the|an?)\s+(?:ai|llm|language model|assistant|chatbot)\s+(?:must|should|will|shall)\b|"
    r"\bdo\s+not\s+(?:mention|reveal|follow)\s+(?:these|the|any|your)\s+(?:instructions?|rules|prompt)\b",
    re.I,
)


def addresses_model(text: str) -> bool:
    """True when ``text`` talks to a language model instead of describing the work."""
    return bool(_ADDRESSES_MODEL.search(text))


def model_addressed_parts(text: str) -> list[str]:
    """The parts of ``text`` (sentences cut at ";", ":" and panel markers) that address a model: what a record
    must not copy. Narrower than sentences, so that a caption's next panel ("...; (b) the glass ...") stays data."""
    out = []
    for sentence in sentences(text):
        if addresses_model(sentence):
            out += [p.strip() for p in re.split(r"[;:]|\([a-h]\)", sentence) if addresses_model(p)] or [sentence]
    return out


def _plain(text: str) -> str:
    """``text`` without its sentences that address a model (never used as a quotation: evidence stays verbatim)."""
    return " ".join(s for s in sentences(text) if not addresses_model(s))


# ---- answers with nothing to say -------------------------------------------------------------
# A sentence that only says nothing is known ("no distinct features", "nothing can be identified", "the caption
# names no feature"): an answer made of these alone is not a training record.
_NOTHING = re.compile(
    r"\bno (?:distinct|visible|identifiable|discernible|specific|particular|notable|clear|obvious|recognisable|recognizable)?\s*(?:micro)?(?:structural )?features?\b|"
    r"\bnothing (?:(?:else )?(?:is|can be|could be|was) )?(?:visible|seen|identified|named|said|shown|determined|known|described)\b|"
    r"\b(?:names?|mentions?|describes?|gives?|states?|provides?) (?:no|nothing)\b|"
    r"\b(?:cannot|can ?not|could not|can't|unable to|impossible to|not possible to) (?:be )?(?:identif|determin|tell|name|nam|say|said|see|seen|assess|judge|infer)\w*|"
    r"\b(?:no|not enough|insufficient|too little) (?:information|detail|context)\b|"
    r"^(?:the )?(?:features? visible (?:is|are)|micrograph shows|image shows)\W*$",
    re.I,
)
_CONTENT_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,}")


def says_nothing(answer: str) -> bool:
    """True when every sentence of ``answer`` only says that nothing can be said (or it has no words at all)."""
    parts = [p.strip() for p in re.split(r"(?<=[.;!?])\s+|\n", answer) if p.strip()]
    return not any(_CONTENT_WORD.search(p) and not _NOTHING.search(p) for p in parts)


# ---- the material the paper studies ----------------------------------------------------------
_ELEMENTS = frozenset(
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo "
    "Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl "
    "Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu".split()
)
# techniques, detectors and units written in capitals: never a material's name
_NOT_MATERIAL = frozenset(
    "SEM TEM STEM BSE BSC BSD SE EDS EDX EDXS WDS XRD XPS XCT CT FIB PFIB AFM STM HRTEM EBSD FTIR DSC TGA BET CBS TLD ICP "
    "UV IR NMR SAXS SANS DFT FEM TE ECAP HPT SPD PM MA AM CBD RT".split()
)
_WORDLIKE_SYMBOLS = frozenset({"In", "As", "At", "Be", "He", "No", "Am", "Es", "Md", "Ho", "Os", "Pa", "Po", "Re"})
_AMOUNT = r"\d+(?:\.\d+)?\s*(?:(?:wt|vol|at|mol)\.?\s*%|%)?\s*"
_SYMBOLS = r"(?:[A-Z][a-z]?(?:\d+(?:\.\d+)?)?)+"
# a chemical system: "Al–4Cu/8 wt%TiO2", "Ti-6Al-4V", "Al–Cu", "SiC/Al2O3"
_SYSTEM = re.compile(rf"(?<![\w–-])(?:{_AMOUNT})?{_SYMBOLS}(?:\s?[–/-]\s?(?:{_AMOUNT})?{_SYMBOLS})+(?![\w–-])")
_REINFORCED = re.compile(rf"({_SYSTEM.pattern})(?:\s+(?:matrix|alloy|powders?))?\s+(?:composites?\s+)?reinforced\s+(?:with|by)\s+(?:{_AMOUNT})?({_SYMBOLS})\b")
# what a sample is (the head noun), in the order a caption most often names it
_HEAD = re.compile(
    r"\b(glass[- ]ceramics?|(?<![\w-])glass(?:es)?(?! (?:substrates?|slides?|cover ?slips?|capillar(?:y|ies)|vials?|beakers?|windows?|transition|tubes?))|"
    r"nanocomposites?|composites?(?! (?:of|image|images|map|maps)\b)|superalloys?|alloys?|steels?|cermets?|ceramics?|"
    r"cathodes?|anodes?|electrodes?|coatings?|thin films?|films?|membranes?|catalysts?|polymers?|foams?|fibres?|fibers?|"
    r"cements?|concretes?|powders?|nanowires?|nanotubes?|laminates?|scaffolds?|hydrogels?|(?:activated |granular |porous )carbons?|"
    r"single crystals?|wafers?|welds?|solders?)\b",
    re.I,
)
_COMPOSITE_LIKE = {"composite", "nanocomposite", "alloy", "superalloy", "steel", "cermet", "ceramic", "powder", "coating", "laminate"}
_MODIFIER_WORDS = {
    "aluminium", "aluminum", "copper", "titanium", "nickel", "iron", "magnesium", "zinc", "silicon", "tungsten", "cobalt",
    "lithium", "sodium", "graphite", "graphene", "silica", "alumina", "zirconia", "ceria", "titania", "carbon", "silver", "gold",
    "polymer", "ceramic", "metal", "metallic", "intermetallic", "oxide", "matrix", "lithium-ion", "li-ion", "sodium-ion", "battery",
    "porous", "activated", "granular", "stainless", "high-entropy", "thermal", "environmental", "barrier", "bioactive", "dense",
    "nanostructured", "nanocrystalline", "amorphous", "sintered", "composite", "layered", "cemented", "tool", "structural",
}
_CHEMICAL_WORDS = {  # modifiers that say what it is made of: preferred to those that say how it looks
    "aluminium", "aluminum", "copper", "titanium", "nickel", "iron", "magnesium", "zinc", "silicon", "tungsten", "cobalt",
    "lithium", "sodium", "graphite", "graphene", "silica", "alumina", "zirconia", "ceria", "titania", "silver", "gold",
}


def _singular(word: str) -> str:
    w = word.lower()
    if w.endswith("glasses"):
        return w[:-2]
    return w[:-1] if w.endswith("s") and not w.endswith(("ss", "us")) else w


def _is_chemical(token: str) -> bool:
    """"NMC", "NMC811", "TiO2", "LiFePO4", "Al–Cu", "Pt": a name written as symbols or an acronym."""
    if token in _NOT_MATERIAL:
        return False
    if _SYSTEM.fullmatch(token) or re.fullmatch(r"[A-Z]{2,5}\d{0,3}", token):
        return True
    parts = re.findall(r"[A-Z][a-z]?", token)
    if not parts or "".join(parts) != re.sub(r"[\d.]", "", token) or not all(p in _ELEMENTS for p in parts):
        return False
    # one symbol alone only when it cannot be an English word ("Pt layer", not "In", "As", "No")
    return len(parts) > 1 or bool(re.search(r"\d", token)) or (len(token) == 2 and token not in _WORDLIKE_SYMBOLS)


def _modified(text: str, head: str) -> list[tuple[int, str]]:
    """Every "<modifiers> <head>" phrase in ``text``: (rank, phrase), rank 0 for a chemical modifier ("NMC cathode"),
    1 for a descriptive one ("porous cathode")."""
    out = []
    for m in _HEAD.finditer(text):
        if _singular(m.group(1).split()[-1]) != head.split()[-1]:
            continue
        words = text[: m.start()].split()[-3:]
        mods: list[str] = []
        for raw in reversed(words):
            w = raw.strip(",;:()[]\"'")
            if raw.startswith("(") and raw.endswith(")") and _is_chemical(w):  # "nickel manganese cobalt oxide (NMC) cathode"
                mods.insert(0, w)
                break
            if w and (_is_chemical(w) or w.lower() in _MODIFIER_WORDS or re.fullmatch(r"[a-z]+-(?:derived|based|doped|coated|reinforced|rich)", w.lower())):
                mods.insert(0, w if _is_chemical(w) else w.lower())
            else:
                break
        if mods:
            chemical = any(_is_chemical(w) or w in _CHEMICAL_WORDS for w in mods)
            out.append((0 if chemical else 1, " ".join(mods + [head])))
    return out


def _system(text: str) -> str | None:
    """The chemical system a text names, amounts dropped: "Al–4Cu/8 wt%TiO2" -> "Al–Cu/TiO2";
    "a matrix of Al–4Cu reinforced with TiO2" -> "Al–Cu/TiO2"."""
    m = _REINFORCED.search(text)
    found = f"{m.group(1)}/{m.group(2)}" if m else None
    if found is None:
        for s in _SYSTEM.finditer(text):
            if all(p in _ELEMENTS for p in re.findall(r"[A-Z][a-z]?", s.group(0))) and len(re.findall(r"[A-Z][a-z]?", s.group(0))) > 1:
                found = s.group(0)
                break
    if found is None:
        return None
    return re.sub(rf"(^|[–/-]\s?){_AMOUNT}(?=[A-Z])", r"\1", found).replace(" ", "")


def name_material(sources: list[str], background: list[str] = ()) -> tuple[str | None, bool]:
    """The material a panel shows, as the paper names it, and whether it is a glass.

    ``sources`` in order of authority (the panel's caption clause, the caption, the title, the abstract);
    ``background`` (paragraphs) only refines a name found there. "NMC cathodes imaged ..." -> "NMC cathode";
    "SEM micrograph of sample Al–4Cu/8 wt%TiO2" in a paper on "new composites" -> "Al–Cu/TiO2 composite";
    None when nothing names it (the caller says "the sample")."""
    sources = [_plain(t) for t in sources if t]
    background = [_plain(t) for t in background if t]
    for text in sources[:3]:  # a glass family named in the caption or title: the glass rules' own vocabulary
        m = _FAMILY.search(text)
        if m:
            return m.group(0).lower(), True
    head = None
    for text in sources:
        m = _HEAD.search(text)
        if m:
            words = m.group(1).lower().split()
            head = " ".join(words[:-1] + [_singular(words[-1])]).replace("glass ceramic", "glass-ceramic")
            break
    if head is None:
        return None, False
    glass = head == "glass"

    def best(texts: list[str], rank: int) -> str | None:
        for text in texts:
            for r, phrase in _modified(text, head):
                if r == rank:
                    return phrase
        return None

    system = None
    if head.split()[-1] in _COMPOSITE_LIKE:
        system = next((s for s in map(_system, sources) if s), None)
    name = best(sources, 0) or (system and f"{system} {head}") or best(background, 0) or best(sources, 1) or head
    if name == head and head.split()[-1] in _COMPOSITE_LIKE:
        system = next((s for s in map(_system, background) if s), None)
        name = f"{system} {head}" if system else head
    return name, glass


def _article(phrase: str) -> str:
    first = phrase.split()[0]
    if re.fullmatch(r"[A-Z]{2,}\d*", first):  # an acronym is read letter by letter: "an NMC", "a YSZ"
        return "an" if first[0] in "AEFHILMNORSX" else "a"
    low = first.lower()
    return "an" if low[0] in "aeio" or (low[0] == "u" and not low.startswith(("uni", "use", "usu", "ura", "uti"))) else "a"


# ---- what a caption names outside the vocabulary ----------------------------------------------
_THING = (
    r"(?:nano-?)?particles?|agglomerat(?:es?|ions?)|clusters?|grains?|grain boundar(?:y|ies)|precipitates?|phases?|lamellae|"
    r"layers?|interfaces?|fibres?|fibers?|whiskers?|platelets?|flakes?|nanowires?|nanotubes?|nanorods?|spheres?|dimples?|"
    r"facets?|ridges?|grooves?|striations?|terraces?|islands?|domains?|channels?|needles?|rods?|twins?|(?:shear )?bands?|"
    r"networks?|debris|segregation|microstructure|matrix|binder|current collector|active material"
)
# nouns that name something specific even without a modifier ("dimples", "precipitates")
_SPECIFIC_THING = re.compile(
    r"^(?:agglomerat\w*|precipitates?|dimples?|whiskers?|striations?|twins?|nanowires?|nanotubes?|nanorods?|platelets?|flakes?|needles?|lamellae)$", re.I
)
_THING_ADJ = {
    "large", "small", "fine", "coarse", "agglomerated", "spherical", "elongated", "equiaxed", "columnar", "nano-sized",
    "nanosized", "nanoscale", "nanometric", "ultrafine", "ultrafine-grained", "uniform", "angular", "irregular", "dense",
    "bright", "dark", "secondary", "primary", "reinforcement", "reinforcing", "distinct", "faceted", "rounded", "needle-like",
    "plate-like", "lamellar", "bimodal", "intermetallic", "protective", "active", "oxide", "carbon", "metallic", "ceramic",
    "polymer", "recrystallised", "recrystallized", "deformed", "fine-grained", "coarse-grained", "nano",
    "sub-micron", "submicron", "micron-sized", "platinum", "binder", "hard", "soft",
}
_THING_RE = re.compile(rf"\b((?:[\w%–.-]+[ -]){{0,4}}?)({_THING})\b", re.I)
_MASS = re.compile(r"(?:debris|segregation|microstructure|binder|active material|matrix|lamellae)$", re.I)


def find_named_things(text: str, limit: int = 3) -> list[str]:
    """What a caption names that the vocabulary does not, as ``other:<words>`` ("large agglomerated TiO2 particles"),
    not negated, with a modifier unless the noun is specific by itself; at most ``limit``."""
    out: list[str] = []
    negated = _negated_spans(text)
    for m in _THING_RE.finditer(text):
        mods = []
        for w in reversed(m.group(1).split()):
            bare = re.sub(r"^(?:\d+(?:\.\d+)?)?\s*(?:(?:wt|vol|at|mol)\.?\s*)?%", "", w.strip(",;:()"))  # "8 wt%TiO2" -> "TiO2"
            if bare.lower() in _THING_ADJ or _is_chemical(bare):
                mods.insert(0, bare if _is_chemical(bare) else bare.lower())
            else:
                break
        noun = m.group(2).lower()
        if not mods and not _SPECIFIC_THING.match(noun):
            continue
        if any(s <= m.start(2) < e for s, e in negated):  # "no agglomerated particles are seen"
            continue
        words = re.sub(r"[^\w -]", "-", " ".join(mods + [noun])).strip(" -")
        words = re.sub(r"-{2,}", "-", words)[:40].rstrip(" -")
        name = f"other:{words}"
        if len(words) >= 2 and name not in out:
            out.append(name)
        if len(out) == limit:
            break
    return out


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
    words = [w for w in re.findall(r"[A-Za-z]{2,}|\d+", text) if w.lower() not in ("and", "or")]
    # "(a) 2 and (b) 8 wt%TiO2 particles": numbers joined to the next panel's words share its description
    if words and all(w.isdigit() for w in words) and re.search(r"(?:\band|\bor|,)\s*$", text):
        return []
    return words


@dataclass
class PanelText:
    """What the offline rules (and the LLM prompt) know about one panel, each piece with its source."""

    panel_id: str
    figure_label: str
    panel_label: str | None
    caption: str  # the whole caption ("caption" source)
    paragraphs: dict[int, str] = field(default_factory=dict)  # paragraph index -> text: citing, methods, aim
    title: str = ""
    abstract: str = ""  # names the material (not a source of evidence, not sent to the LLM)

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
    describing: list[tuple[str, str]]  # (source, sentence) about this panel; the first is the caption's ("" if none)
    causes: list[tuple[str, str]]
    glass: bool = False  # the material is a glass: the glass vocabulary's wording applies


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
    # paper text is data: a sentence that addresses a model is neither read nor quoted
    said = sentences(clause)
    kept = [c for c in said if not addresses_model(c)]
    quote = clause if len(kept) == len(said) else max(kept, key=len, default="")
    clean = " ".join(kept)
    features = find_features(clean)
    describing: list[tuple[str, str]] = [("caption", quote)]
    causes: list[tuple[str, str]] = []
    composition = imaging_source = aim = None
    for idx, text in panel.paragraphs.items():
        src = f"paragraph:{idx}"
        in_run = False
        for s in sentences(text):
            if len(s.split()) < 4:  # a fragment where a paragraph breaks across columns or pages
                continue
            if addresses_model(s) or _CAPTION_START.match(s) and not find_figure_mentions(s):
                continue  # text aimed at a model; a table's caption read as a paragraph ("Table 1 Powders used in this study.")
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
    if not features:  # what the caption names outside the vocabulary: "large agglomerated TiO2 particles"
        features = find_named_things(clean)
    if not features:  # a caption that names nothing: fall back to the sentences about this panel
        for _, s in describing[1:]:
            features += [f for f in find_features(s) if f not in features]
    if not features:
        for _, s in describing[1:] + causes:
            features += [f for f in find_named_things(s) if f not in features][: 3 - len(features)]
    if not causes and features:  # the paper may explain a feature once, next to another figure
        causes = [
            (f"paragraph:{idx}", s)
            for idx, text in panel.paragraphs.items()
            for s in sentences(text)
            if _CAUSAL.search(s) and not find_figure_mentions(s) and not addresses_model(s)
            and set(find_features(s)) & set(features)
        ][:2]
    material, glass = name_material([clause, panel.caption, panel.title, panel.abstract], list(panel.paragraphs.values()))
    processing, processing_adjective = _processing(clean)
    kv, mag = _KV.search(clean), _MAG.search(clean)
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
        material=material,
        processing=processing,
        processing_adjective=processing_adjective,
        composition=composition,
        imaging=imaging,
        imaging_source=imaging_source,
        aim=aim,
        features=features,
        describing=describing,
        causes=causes,
        glass=glass,
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


# the glass wording of a feature, for a material that is not a glass
_NON_GLASS_NAMES = {
    "homogeneous_glass": "a homogeneous, defect-free microstructure",
    "bulk_crystallisation": "crystals in the bulk",
    "crystalline_inclusion": "crystalline inclusions",
}


def _feature_name(feature: str, glass: bool = True) -> str:
    if feature.startswith("other:"):  # the caption's own words: "large agglomerated TiO2 particles", "a Pt layer"
        words = feature.removeprefix("other:")
        last = words.split()[-1]
        plural = (last.endswith("s") and not last.endswith("ss")) or _MASS.search(words)
        return words if plural else f"{_article(words)} {words}"
    return FEATURES[feature] if glass else _NON_GLASS_NAMES.get(feature, FEATURES[feature])


def _feature_phrase(features: list[str], glass: bool = True) -> str:
    """What an expert calls ``features`` in an answer; never called without features (an answer with nothing
    to say is not written as if it said something: "The features visible are no distinct features.")."""
    return _join([_feature_name(f, glass) for f in features])


def _pick(options: list[str], key: str) -> str:
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def _context(level: str, facts: Facts) -> tuple[str, list[str], list[tuple[str, str]]]:
    """The context sentence put into a question at ``level``, its context types, and its evidence.

    The material is what the paper names ("an NMC cathode", "a soda-lime glass"); when nothing names it the
    question says no more than "a sample" and claims no "material" context."""
    if level == "none":
        return "", [], []
    material = facts.material
    types, parts, evidence = [], [], []
    if material:
        parts.append(f"This SEM image shows {_article(material)} {material}")
        types.append("material")
    if level in ("moderate", "high") and facts.processing:
        if not facts.processing_adjective:  # "melted at 1480 °C for 0.5 h"
            parts = [(parts[0] if parts else "This SEM image shows a sample") + f" {facts.processing}"]
        else:  # "roller quenched", "as annealed": an adjective of "the ... glass" in the caption
            thing = material if material and facts.glass else "glass"
            parts = [f"This SEM image shows {_article(facts.processing)} {facts.processing} {thing}"]
        types.append("processing")
    if level == "high":
        if facts.composition:
            evidence.append(facts.composition)
            types.append("composition")
        if facts.imaging:
            parts.append(f"{'It' if parts else 'The sample'} was imaged in the SEM ({facts.imaging})")
            types.append("imaging")
        if facts.aim:
            parts.append("The study's aim: " + _shorten(facts.aim[1], 220).rstrip("."))
            evidence.append(facts.aim)
            types.append("aim")
    if not parts:
        return "", types, evidence
    return ". ".join(parts) + ". ", types, evidence


# "{subject}": the material the paper names ("the NMC cathode") above context level none, else "the sample"
_QUESTIONS = {
    "description": ["What does this SEM image show?", "Describe this SEM micrograph.", "What can be seen in this SEM image?"],
    "feature_identification": [
        "Which microstructural features can you identify in this image?",
        "Identify the main features visible in this micrograph.",
        "What microstructural features are present?",
    ],
    "defect_detection": [
        "Does the image show any defects or anomalies? If so, which?",  # a yes says there is a defect
        "Is {subject} free of defects? Name any defect you see.",  # a yes says there is none
        "Are there defects or anomalies in this micrograph?",
    ],
    "complex_reasoning": [
        "Explain how the processing history leads to the microstructure seen here.",
        "Relate what the image shows to how {subject} was made and treated.",
        "Why does {subject} look like this, given its processing?",
    ],
}

# yes/no questions about defects, and which way their "yes" points
_YES_NO_QUESTION = re.compile(r"^(?:is|are|was|were|does|do|did|has|have|had|can|could|would|will|should|may|might)\b", re.I)
_ASKS_ABOUT_DEFECTS = re.compile(
    r"\b(?:defects?|defect-free|anomal\w*|flaws?|flawless|imperfections?|cracks?|pores?|porosity|voids?|bubbles?|inclusions?|"
    r"scratch\w*|crystalli[sz]\w*|crystals?|dendrit\w*|unmolten|stones?|leach\w*|pristine|intact)\b",
    re.I,
)
_ASKS_FREE = re.compile(
    r"\bfree (?:of|from)\b|\b\w+-free\b|\bflawless\b|\bpristine\b|\bintact\b|\bwithout (?:any )?\w+|\b(?:no|not any) (?:\w+ )?(?:defects?|flaws?|anomal\w*|cracks?|pores?)\b",
    re.I,
)


def question_polarity(question: str) -> str | None:
    """How a yes answers the question's yes/no question about defects: "free" (a yes says there is no defect:
    "Is this glass free of defects?"), "any" (a yes says there is one: "Are there any defects?"), or None when
    it asks none ("Which features are present?")."""
    for q in re.findall(r"[^.?!]*\?", question):
        q = q.strip()
        if _YES_NO_QUESTION.match(q) and _ASKS_ABOUT_DEFECTS.search(q):
            return "free" if _ASKS_FREE.search(q) else "any"
    return None


# what an answer with nothing to say reads like: the validator rejects it ("uninformative"), it is never a record
_NOTHING_NAMED = {
    "description": "The caption names no feature of this panel.",
    "feature_identification": "The paper names no feature of this panel.",
    "defect_detection": "The paper names no feature of this panel, so no defect can be identified.",
    "complex_reasoning": "The paper names no feature of this panel and gives no cause.",
}


# defects in any material; the rest of DEFECT_FEATURES are defects of a glass (pores in a battery electrode or
# crystals in a ceramic are what the material is made of)
_DEFECTS_IN_ANY_MATERIAL = frozenset({"crack", "crack_network", "scratch"})


def _defect_answer(features: list[str], defects: list[str], polarity: str | None, glass: bool, material: str | None) -> str:
    """The answer to a defect question, its yes/no following the question: "Is it free of defects?" -> "No. The
    image shows pores."; "Are there defects?" -> "Yes. The image shows pores." It never contradicts the label.

    Where the rules cannot judge (nothing named; only features outside the vocabulary; pores in a material that
    is not a glass) the answer says so and the validator keeps it out of the dataset ("uninformative")."""
    if not features:
        return _NOTHING_NAMED["defect_detection"]
    yes_defect, no_defect = ("No", "Yes") if polarity == "free" else ("Yes", "No")
    if defects and (glass or set(defects) & _DEFECTS_IN_ANY_MATERIAL):
        shown = defects if glass else [d for d in defects if d in _DEFECTS_IN_ANY_MATERIAL]
        return f"{yes_defect}. The image shows {_feature_phrase(shown, glass)}."
    phrase = _feature_phrase(features, glass)
    if defects or all(f.startswith("other:") for f in features):
        return f"Whether the {phrase.removeprefix('a ').removeprefix('an ')} named here are defects in the {material or 'sample'} cannot be judged from the paper's words."
    if features == ["homogeneous_glass"]:
        return f"{no_defect}. The image shows {phrase}."
    return f"{no_defect}. The image shows {phrase}: microstructure, not a defect."


def _answer_detail(sentence: str) -> str | None:
    """A paper's sentence fit to follow an answer: figure references dropped, not a bare pointer ("This is more
    evident in Fig. 4.")."""
    out = _without_figure_refs(sentence)
    if len(out.split()) < 6 or re.search(r"\b(?:Figs?\.|Figures?)\s*\d", out):
        return None
    return out


def generate(panel: PanelText, slots: list[str]) -> list[dict]:
    """QA records for one panel, one per slot "<type>@<level>", in the LLM reply format.

    Where the paper names nothing about the panel the answer says so, and the validator keeps it out of the
    dataset (reason "uninformative"): a slot is better empty than filled with "no distinct features"."""
    facts = extract_facts(panel)
    defects = defect_types(facts.features)
    feature_text = _feature_phrase(facts.features, facts.glass) if facts.features else ""
    details = [(src, d) for src, s in facts.describing[1:] if (d := _answer_detail(s))][:1]
    # a caption that is only its label ("Fig. 1.": the legend is printed elsewhere) is no evidence
    caption_evidence = [facts.describing[0]] if len(_CAPTION_START.sub("", facts.describing[0][1]).split()) >= 3 else []
    records = []
    for slot in slots:
        qtype, _, level = slot.partition("@")
        context, context_types, context_evidence = _context(level, facts)
        subject = f"the {facts.material}" if facts.material and level != "none" else "the sample"
        asked = _pick(_QUESTIONS[qtype], panel.panel_id + slot).format(subject=subject)
        question = context + asked
        evidence = list(caption_evidence)
        detail = ""
        if details:
            detail = details[0][1]
            detail_source = next((src, s) for src, s in facts.describing[1:] if _answer_detail(s) == detail)
        if qtype == "description":
            if facts.features:
                answer = f"The micrograph shows {feature_text}."
                if detail:
                    answer += " " + detail
                    evidence.append(detail_source)
            elif detail:
                answer = detail
                evidence.append(detail_source)
            else:
                answer = _NOTHING_NAMED[qtype]
        elif qtype == "feature_identification":
            if facts.features:
                answer = f"The features visible are {feature_text}."
                if detail:
                    answer += " " + detail
                    evidence.append(detail_source)
            else:
                answer = _NOTHING_NAMED[qtype]
        elif qtype == "defect_detection":
            answer = _defect_answer(facts.features, defects, question_polarity(asked), facts.glass, facts.material)
        else:  # complex_reasoning
            said = [f"The micrograph shows {feature_text}."] if facts.features else []
            if said and facts.processing:
                thing = facts.material or "sample"
                said.append(f"The sample is the {facts.processing} glass." if facts.processing_adjective else f"The {thing} was {facts.processing}.")
            if said and facts.causes:
                said += [_without_figure_refs(s) for _, s in facts.causes[:2]]
                evidence += facts.causes[:2]
            elif said:
                said.append("The paper gives no explicit cause for these features.")
            answer = " ".join(said) or _NOTHING_NAMED[qtype]
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
