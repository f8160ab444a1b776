"""The defect claim an answer makes: negation- and polarity-aware (issue 9), hand-written cases."""

from __future__ import annotations

import pytest

from glassllava.qa_rules import question_polarity
from glassllava.scoring import content_claim, defect_claim, token_f1, yes_no_claim

FREE = "Is this glass free of defects? Name any defect you see."
ANY = "Does the image show any defects or anomalies? If so, which?"


@pytest.mark.parametrize(
    "question, polarity",
    [
        (FREE, "free"),
        ("This SEM image shows an NMC cathode. Is the NMC cathode free of defects? Name any defect you see.", "free"),
        ("This SEM image shows a glass melted at 1480 °C for 0.5 h. Is the glass free of defects?", "free"),
        ("Is the coating crack-free?", "free"),
        ("Are there no defects in this glass?", "free"),
        (ANY, "any"),
        ("Are there defects or anomalies in this micrograph?", "any"),
        ("Does the glass contain bubbles?", "any"),
        ("Which microstructural features can you identify in this image?", None),
        ("What does this SEM image show?", None),
    ],
)
def test_question_polarity(question, polarity):
    assert question_polarity(question) == polarity


@pytest.mark.parametrize(
    "answer, question, claim",
    [
        # negations before and after the defect word
        ("no cracks are visible", None, False),
        ("Cracks are not visible.", None, False),
        ("Cracks cannot be seen at this magnification.", None, False),
        ("A homogeneous glass without bubbles or crystals.", None, False),
        ("There are no cracks and no pores.", None, False),
        ("Neither cracks nor pores are present.", None, False),
        ("No defect or anomaly can be identified in this image.", None, False),
        ("The glass is defect-free.", None, False),
        # what follows an exception is asserted
        ("free of defects except a few bubbles", None, True),
        ("The glass is free of defects except a few bubbles.", FREE, True),
        ("No cracks, but a few pores are visible.", None, True),
        ("There are no cracks and a few pores.", None, True),
        # a negated negation asserts
        ("The glass is not free of defects.", None, True),
        ("It is not free of defects: pores are visible.", FREE, True),
        ("The glass is not defect-free: bubbles remain.", None, True),
        # the opening yes/no through the question's polarity
        ("No. The image shows pores.", FREE, True),
        ("No. The image shows pores.", ANY, False),
        ("Yes. The image shows pores.", ANY, True),
        ("Yes. The image shows pores.", FREE, False),
        ("Yes, it is free of defects.", FREE, False),
        ("Yes.", FREE, False),
        ("No.", FREE, True),
        # without the question the text decides; a bare yes/no answers "are there defects?"
        ("No. The image shows pores.", None, True),
        ("Yes, it is free of defects.", None, False),
        ("Yes.", None, True),
        # microstructure is not a defect; saying nothing is no claim
        ("The image shows droplet-type phase separation: microstructure, not a defect.", None, False),
        ("The micrograph shows no distinct features.", None, None),
        ("The image shows pores, which is not surprising given the short fining.", None, True),
        ("", None, None),
    ],
)
def test_defect_claim(answer, question, claim):
    assert defect_claim(answer, question) is claim


def test_the_two_readings_separately():
    assert yes_no_claim("No defect is visible.", "free") is None  # "No defect ..." is not a "No."
    assert yes_no_claim("No, the glass is clean.", "any") is False
    assert content_claim("No. The image shows pores.") is True
    assert content_claim("Yes.") is None


def test_token_f1():
    assert token_f1("gas bubbles", "gas bubbles") == 1.0
    assert token_f1("cracks", "bubbles") == 0.0
