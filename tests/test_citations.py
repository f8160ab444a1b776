from __future__ import annotations

import pytest

from glassllava.citations import find_figure_mentions, paragraph_citations


@pytest.mark.parametrize(
    "text, expected",
    [
        ("as shown in Fig. 3.", [("3", [])]),
        ("Figs. 2-4 show the fracture surfaces", [("2", []), ("3", []), ("4", [])]),
        ("Figs. 2\u20134 show", [("2", []), ("3", []), ("4", [])]),
        ("Figures 3 and 4 compare", [("3", []), ("4", [])]),
        ("Fig. 3(a) shows", [("3", ["a"])]),
        ("Figure 3a shows", [("3", ["a"])]),
        ("Fig. 3b and c show", [("3", ["b", "c"])]),
        ("Fig. 3(a-c)", [("3", ["a", "b", "c"])]),
        ("Fig. 3(a)\u2013(c)", [("3", ["a", "b", "c"])]),
        ("Fig. 3 (a) and (b)", [("3", ["a", "b"])]),
        ("Fig. 3a,b.", [("3", ["a", "b"])]),
        ("Figs. 2a and 5b", [("2", ["a"]), ("5", ["b"])]),
        ("Figs. 2, 3 and 5", [("2", []), ("3", []), ("5", [])]),
        ("Fig. S2", [("S2", [])]),
        ("Figs. S2\u2013S4", [("S2", []), ("S3", []), ("S4", [])]),
        ("Supplementary Fig. 2", [("S2", [])]),
        ("cracks (Fig. 4) grow", [("4", [])]),
        ("Fig.5 shows", [("5", [])]),
        ("FIG. 2 shows", [("2", [])]),
        ("Fig. 3A", [("3", ["a"])]),
        ("Figure 7-26 shows", [("7-26", [])]),
        ("see Table 3", []),
        ("configure 3 samples", []),
        ("in Fig. 3, 20 samples were broken", [("3", [])]),
        ("Fig. 1a and a bar", [("1", ["a"])]),
        ("Fig. 3. SEM image of the surface.", []),  # a caption's own label
        ("Fig. 3. Same as Fig. 2b after etching.", [("2", ["b"])]),
    ],
)
def test_find_figure_mentions(text, expected):
    assert [(m.figure_label, m.panel_labels) for m in find_figure_mentions(text)] == expected


def test_mention_text_is_the_citing_phrase():
    (m,) = find_figure_mentions("cracks grow (Fig. 3b and c) quickly")
    assert m.mention == "Fig. 3b and c"


def test_paragraph_citations_merge_panels_per_figure():
    rows = paragraph_citations("sha", 7, "Fig. 3a shows cracks; Fig. 3(c) and Fig. 4 show pores.")
    assert [(r["figure_label"], r["panel_labels"]) for r in rows] == [("3", ["a", "c"]), ("4", [])]
    assert rows[0]["mention"] == "Fig. 3a; Fig. 3(c)"
    assert all(r["paper_sha"] == "sha" and r["paragraph_index"] == 7 for r in rows)
