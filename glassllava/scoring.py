"""Offline scores of answers against references: the defect claim an answer makes, token F1.

``defect_claim(answer, question)`` reads what an answer says about defects: True (a defect or anomaly is
present), False (none), or None (it does not say). Two readings:

- the yes/no that opens the reply, read through the question's polarity (``qa_rules.question_polarity``): to
  "Is this glass free of defects?" a "No." says there is a defect, to "Are there any defects?" a "No." says
  there is none;
- what the text says, negation-aware: each defect word is negated by the negation before it in its clause
  ("no cracks are visible", "without pores", "free of defects"), a negated negation counts twice ("not free of
  defects", "not defect-free"), a predicate negation after it counts too ("cracks are not visible"), and what
  follows an exception is asserted ("free of defects except a few bubbles"). Any asserted defect makes the claim
  True; only negated ones make it False.

With the question known the explicit yes/no decides (the text decides where there is none); without it the text
decides, and a bare yes/no is read as answering "are there defects?".
"""

from __future__ import annotations

import re
from collections import Counter

from glassllava.qa_rules import DEFECT_FEATURES, FEATURES, question_polarity

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_YES = re.compile(r"^\W*(?:yes|yeah|yep|indeed|correct|affirmative)\b", re.I)
_NO = re.compile(r"^\W*(?:no|nope)\s*(?:[.,;:!\u2013\u2014-]|$)", re.I)  # "No." / "No, ..." (not "No cracks ...")

# the words of every defect feature and their common synonyms
_DEFECT_WORDS = {
    "defect", "defects", "anomaly", "anomalies", "anomalous", "flaw", "flaws", "crack", "cracks", "cracked", "cracking", "microcrack",
    "microcracks", "fissure", "fissures", "pore", "pores", "porosity", "porous", "void", "voids", "bubble", "bubbles", "seed", "seeds",
    "blister", "blisters", "unmolten", "unmelted", "stone", "stones", "inclusion", "inclusions", "crystal", "crystals", "crystalline",
    "crystallisation", "crystallization", "devitrification", "devitrified", "dendrite", "dendrites", "dendritic", "leached", "leaching",
    "corroded", "corrosion", "gel", "scratch", "scratches", "scratched", "imperfection", "imperfections",
}
for _name in DEFECT_FEATURES:
    _DEFECT_WORDS.update(_WORD.findall(FEATURES[_name].lower()))
_DEFECT_WORDS -= {"a", "the", "in", "of", "and", "bulk", "surface", "layer", "raw", "material", "grains"}
# one word that says "none of it": "defect-free", "crack-free", "flawless"
_CLEAN_WORDS = {"flawless", "pristine", "defectless"}

# where a negation's reach ends: a new clause, an exception ("except", "but", "apart from"), "and a few ..."
_SEGMENT = re.compile(
    r"[.;:!?]+(?:\s+|$)|\n|,?\s*\b(?:except(?: for)?|apart from|other than|save for|but|however|although|though|whereas|while|yet)\b"
    r"|,?\s+and\s+(?=(?:a|an|some|several|many|numerous|few|a few|large|small|\d+)\b)",
    re.I,
)
_PRE_NEGATORS = {"no", "not", "never", "without", "none", "neither", "nor", "cannot", "absence", "lack", "lacks", "lacking", "devoid", "free", "rid"}
_NEGATED_FREE = {"free", "without", "devoid", "absence", "lack", "lacks", "lacking", "rid"}  # "not free of", "not without"
_POST_NEGATION = re.compile(
    r"^\s*(?:\w+\s+){0,2}?(?:(?:is|are|was|were|be|been|being|can|could|do|does|did|has|have)\s+(?:not|never)\b|\w+n't\b|cannot\b|(?:are|is|were|was)\s+absent\b|absent\b|none\b)",
    re.I,
)


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _is_negator(words: list[str], i: int) -> bool:
    w = words[i]
    if w in ("free", "devoid", "rid", "absence"):  # "free of", "devoid of", "absence of"
        return i + 1 < len(words) and words[i + 1] in ("of", "from")
    return w in _PRE_NEGATORS or w.endswith("n't")


def _negated(words: list[str], i: int, rest: str) -> bool:
    """Is the defect word ``words[i]`` negated within its segment?"""
    pre = [j for j in range(i) if _is_negator(words, j)]
    if pre:
        j = pre[-1]
        # "not free of defects", "not without cracks": the negation of a negation asserts
        if words[j] in _NEGATED_FREE and any(words[k] in ("not", "never", "hardly") or words[k].endswith("n't") for k in range(max(0, j - 3), j)):
            return False
        return True
    return bool(_POST_NEGATION.match(rest))


def content_claim(answer: str) -> bool | None:
    """What the text of ``answer`` says about defects, yes/no words aside (see the module docstring)."""
    asserted = denied = False
    for segment in _SEGMENT.split(answer):
        if not segment or not segment.strip():
            continue
        lowered = segment.lower()
        words = _tokens(lowered)
        spans = [m for m in _WORD.finditer(lowered)]
        for i, w in enumerate(words):
            rest = lowered[spans[i].end():]
            clean = w in _CLEAN_WORDS or (w.endswith("-free") and w.removesuffix("-free") in _DEFECT_WORDS | {"defect"})
            if clean:  # "defect-free" denies; "not defect-free" asserts
                negators = [k for k in range(max(0, i - 3), i) if words[k] in ("not", "never", "hardly") or words[k].endswith("n't")]
                if negators:
                    asserted = True
                else:
                    denied = True
            elif w in _DEFECT_WORDS:
                if _negated(words, i, rest):
                    denied = True
                else:
                    asserted = True
    return True if asserted else False if denied else None


def yes_no_claim(answer: str, polarity: str | None) -> bool | None:
    """The defect claim of the yes/no that opens ``answer``, for a question of ``polarity`` ("free" / "any";
    None reads as "any"); None when the answer opens with neither."""
    if _YES.match(answer):
        said_yes = True
    elif _NO.match(answer):
        said_yes = False
    else:
        return None
    return not said_yes if polarity == "free" else said_yes


def defect_claim(answer: str, question: str | None = None) -> bool | None:
    """True: the answer says a defect/anomaly is present; False: it says none is; None: it does not say.

    ``question``: the question answered; its polarity decides what an opening "Yes"/"No" means."""
    text = answer.strip()
    if not text:
        return None
    if question is not None:
        said = yes_no_claim(text, question_polarity(question))
        return said if said is not None else content_claim(text)
    content = content_claim(text)
    return content if content is not None else yes_no_claim(text, None)


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
