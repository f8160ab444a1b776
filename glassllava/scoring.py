"""Offline scores of answers against references: the defect claim an answer makes, token F1.

``defect_claim`` reads what an answer says about defects: True (a defect or anomaly is present), False
(none), or None (it does not say). It looks at the yes/no that opens a reply first, then at negations
("no cracks are visible", "free of defects", "without pores") before defect words, so that
"free of defects except a few bubbles" is a defect and "no cracks or pores" is not.
"""

from __future__ import annotations

import re
from collections import Counter

from glassllava.qa_rules import DEFECT_FEATURES, FEATURES

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_YES = re.compile(r"^\W*(yes|yeah|indeed|there (?:are|is) (?:a |an |some |several |many )?(?:defects?|anomal))", re.I)
_NO = re.compile(r"^\W*(no\b|none\b|not\b|there (?:are|is) no\b)", re.I)
_EXCEPT = re.compile(r"\b(except|apart from|but|other than|save for|however)\b", re.I)
_NEGATION = re.compile(r"\b(no|not|free of|free from|without|absence of|absent|lacks?|lacking|neither|nor|none|devoid of)\b", re.I)
_CLEAN = re.compile(r"\b(defect[- ]free|homogeneous,? defect|free of (?:any )?(?:defects?|anomal\w*)|no (?:visible )?(?:defects?|anomal\w*)|clean glass|pristine)\b", re.I)

# the words of every defect feature and their common synonyms
_DEFECT_WORDS = {
    "defect", "defects", "anomaly", "anomalies", "anomalous", "flaw", "flaws", "crack", "cracks", "cracked", "cracking", "microcrack",
    "microcracks", "fissure", "fissures", "pore", "pores", "porosity", "porous", "void", "voids", "bubble", "bubbles", "seed", "seeds",
    "blister", "blisters", "unmolten", "unmelted", "stone", "stones", "inclusion", "inclusions", "crystal", "crystals", "crystalline",
    "crystallisation", "crystallization", "devitrification", "devitrified", "dendrite", "dendrites", "dendritic", "leached", "leaching",
    "corroded", "corrosion", "gel", "scratch", "scratches", "scratched",
}
for _name in DEFECT_FEATURES:
    _DEFECT_WORDS.update(_WORD.findall(FEATURES[_name].lower()))
_DEFECT_WORDS -= {"a", "the", "in", "of", "and", "bulk", "surface", "layer", "raw", "material", "grains"}


def _clauses(text: str) -> list[str]:
    return [c for c in re.split(r"[.;!?]\s+|\n", text) if c.strip()]


def _mentions_defect(words: list[str]) -> bool:
    return any(w in _DEFECT_WORDS for w in words)


def defect_claim(answer: str) -> bool | None:
    """True: the answer says a defect/anomaly is present; False: it says none is; None: it does not say."""
    text = answer.strip()
    if not text:
        return None
    if _YES.match(text):
        return True
    opens_no = bool(_NO.match(text))
    saw_clean = opens_no
    for clause in _clauses(text):
        lowered = clause.lower()
        # "free of defects except a few bubbles": what follows the exception is present
        parts = _EXCEPT.split(lowered, maxsplit=1)
        if len(parts) == 3 and _NEGATION.search(parts[0]) and _mentions_defect(_WORD.findall(parts[2])):
            return True
        if _CLEAN.search(lowered):
            saw_clean = True
            continue
        negated = _NEGATION.search(lowered)
        words = _WORD.findall(lowered)
        if _mentions_defect(words):
            if negated and negated.start() < min(lowered.find(w) for w in words if w in _DEFECT_WORDS):
                saw_clean = True
                continue
            if not opens_no:
                return True
    return False if saw_clean else None


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between two texts (lower-cased words)."""
    p, r = _tokens(prediction), _tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)
