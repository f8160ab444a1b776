"""The evaluation report: content (the paper's numbers, proxies labelled, subsets said, failures counted, only real
differences called), escaping of everything from papers, models and judges, atomic deterministic writes; and the
page loaded in headless Chromium (skipped where no Chromium is installed)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassllava.eval_metrics import summarise
from glassllava.eval_report import PAPER_REFERENCE, pick_examples, write_report

EVIL_ANSWER = "<script>alert('a')</script> Bubbles & \"cracks\" it's <img src=x onerror=alert(2)>"
EVIL_QUESTION = "Is there a defect? <b>bold</b> & 'quoted' \"twice\" </td></table>"
EVIL_REASON = "The answer says <i>bubbles</i> & </li></ul><script>x()</script>"
LEVELS = ("none", "low", "moderate", "high")
TYPES = ("description", "feature_identification", "defect_detection", "complex_reasoning")
CONTEXT_TYPES = ("composition", "processing", "imaging", "purpose", "prior_observation")
FEATURES = ("bubbles", "unmolten sand grains", "microcracks", "crystallites", "phase separation", "fracture mirror")
# skill: base chance of a good answer; context: how much high context helps; defect_bias: P(claims a defect) for majority
ROWS = {"model": (0.70, 0.22), "blind": (0.50, 0.25), "base": (0.35, 0.05), "majority": (None, None), "vision:gpt-4o": (0.80, 0.15)}


def fake_eval(root: Path, *, n_images: int = 50, per_image: int = 4, rows=tuple(ROWS), seed: int = 0, llm: bool = True,
              evil_every: int = 7) -> tuple[list[dict], list[dict], dict[str, Path]]:
    """Plausible evaluation inputs: ``n_images`` SEM-like PNGs (one left without a file), ``per_image`` questions each
    over every question type and context level, every row's answer, offline proxies and (``llm``) LLM-judge
    metrics whose quality and defect accuracy rise with context, ~3 % judge failures, a few empty answers, and
    hostile text (``<script>``, ``&``, quotes) in some questions, answers and reasons."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    questions = []
    for i in range(n_images):
        tex = rng.normal(150, 25, (90, 120)).clip(0, 255)
        for _ in range(int(rng.integers(2, 7))):  # dark "bubbles"
            cy, cx, r = rng.integers(10, 80), rng.integers(10, 110), rng.integers(4, 12)
            yy, xx = np.ogrid[:90, :120]
            tex[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 25
        img = Image.fromarray(tex.astype(np.uint8), "L")
        path = root / f"img{i}.png"
        img.save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if i != 1:  # image 1 has no file: the gallery shows a placeholder
            images[sha] = path
        gold = bool(rng.random() < 0.55)
        for k in range(per_image):
            qtype = TYPES[(i + k) % 4]
            level = LEVELS[int(rng.integers(0, 4))]
            ctypes = sorted(rng.choice(CONTEXT_TYPES, size=LEVELS.index(level) + (level == "high"), replace=False).tolist())
            feats = sorted(rng.choice(FEATURES, size=int(rng.integers(1, 4)), replace=False).tolist())
            evil = (i * per_image + k) % evil_every == 0
            questions.append({
                "qa_id": f"p{i % 9}-panel{i}-q{k}", "paper_sha": f"{i % 9:02d}" * 32, "panel_id": f"paper{i % 9}-fig{i}-a", "image_sha": sha,
                "question": EVIL_QUESTION if evil else f"{'Given the soda-lime glass annealed at 550 °C, ' if level != 'none' else ''}what does this SEM image show? ({qtype})",
                "reference": f"The micrograph shows {', '.join(feats)} in a glassy matrix" + (" & a defect <region>." if gold else "."),
                "question_type": qtype, "complexity": "complex" if qtype == "complex_reasoning" or level == "high" else "simple",
                "context_level": level, "context_types": ctypes, "features": feats, "defect_present": gold,
                "defect_types": ["bubbles"] if gold else [], "evil": evil,
            })
    answers, judgments = [], []
    for row in rows:
        skill, context = ROWS.get(row, (0.6, 0.1))
        for q in questions:
            lv = LEVELS.index(q["context_level"]) / 3
            p = 0.55 if skill is None else min(0.97, skill + context * lv)
            good = rng.random() < p
            claim = True if skill is None else (q["defect_present"] if good else not q["defect_present"])
            empty = skill is not None and rng.random() < 0.01
            text = ("" if empty else EVIL_ANSWER if q["evil"] and row == "model" else
                    "A defect is present." if skill is None else
                    f"The image shows {', '.join(q['features'][: 1 + good])}; {'a defect is visible' if claim else 'no defects are visible'}.")
            answers.append({**{k: v for k, v in q.items() if k != "evil"}, "row": row, "answer": text,
                            "new_tokens": len(text.split()), "seconds": float(rng.uniform(0.2, 1.5))})

            def add(metric, score, detail, judge="offline", fail_rate=0.0):
                failed = empty or rng.random() < fail_rate
                if failed:
                    detail = {"error": "empty_answer: the row gave no answer to judge"} if empty else {"error": "reply not valid JSON"}
                judgments.append({"row": row, "qa_id": q["qa_id"], "metric": metric, "judge": judge, "score": None if failed else float(score),
                                  "ok": not failed, "detail": json.dumps(detail), "request_key": "" if judge == "offline" else "k" * 16})

            base = 0.25 if skill is None else skill
            rouge = float(np.clip(rng.normal(0.15 + 0.35 * base + 0.1 * lv * (skill is not None), 0.08), 0, 1))
            add("proxy_token_f1", min(1.0, rouge * 1.15), {})
            add("proxy_rouge_l", rouge, {})
            recall = float(np.clip(rng.normal(0.2 + 0.6 * base * (skill is not None), 0.2), 0, 1))
            add("proxy_feature_recall", recall, {"matched": q["features"][: int(recall * len(q["features"]))]})
            add("proxy_feature_score", 1 + min(3, int(recall * 4)), {})
            add("proxy_hallucination", float(np.clip(rng.normal(0.3 - 0.2 * base, 0.1), 0, 1)), {})
            proxy_claim = claim if rng.random() < 0.9 else not claim
            add("proxy_defect", float(proxy_claim == q["defect_present"]), {"claim": proxy_claim, "gold_present": q["defect_present"]}, fail_rate=0.05)
            if llm:
                judge = "llm:gpt-4o-2024-08-06@3f2a9c1b7d40"
                reason = EVIL_REASON if q["evil"] else f"{'Agrees' if good else 'Disagrees'} with the reference on {q['features'][0]}."
                quality = float(np.clip(rng.normal((30 if skill is None else 40 + 45 * p), 10), 0, 100))
                add("quality", quality, {"justification": reason}, judge, 0.03)
                ref_s, cand_s = 8, int(np.clip(round(quality / 11), 1, 10))
                add("relative", cand_s / ref_s * 100, {"reference_score": ref_s, "candidate_score": cand_s, "justification": reason}, judge, 0.03)
                if q["question_type"] == "feature_identification":
                    n_match = int(good) + (len(q["features"]) > 1 and good)
                    add("features", 1 + min(3, n_match + good), {"matched": q["features"][:n_match], "missed": q["features"][n_match:],
                                                                  "hallucinated": ["porosity"] if not good else [], "justification": reason}, judge, 0.03)
                add("defect", float(claim == q["defect_present"]), {"claims_defect": int(claim), "types": ["bubbles"] if claim else [],
                                                                     "gold_present": q["defect_present"], "justification": reason}, judge, 0.03)
    return answers, judgments, images


class _Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.chunks: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "a":
            self.links.append(a.get("href") or "")
        if tag in ("td", "th", "tr", "br", "p", "li", "div", "h2", "h3", "figcaption"):
            self.chunks.append(" ")

    def handle_data(self, data):
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.chunks))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    answers, judgments, images = fake_eval(root / "images")
    summary = summarise(answers, judgments, bootstrap=300, seed=0)
    html_path, md_path = write_report(summary, answers, judgments, root / "reports", examples=24, images=images)
    return {"root": root, "answers": answers, "judgments": judgments, "images": images, "summary": summary,
            "html": html_path, "md": md_path, "raw": html_path.read_text(), "page": _Page(html_path.read_text())}


def test_writes_html_and_markdown_atomically(report):
    assert report["html"].name == "eval.html" and report["md"].name == "eval.md"
    assert not [p for p in report["html"].parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    again = write_report(report["summary"], report["answers"], report["judgments"], report["root"] / "again", examples=24, images=report["images"])
    assert again[0].read_text() == report["raw"] and again[1].read_text() == report["md"].read_text()  # deterministic


def test_self_contained_no_script_and_csp(report):
    raw, page = report["raw"], report["page"]
    assert "Content-Security-Policy" in raw and "default-src 'none'" in raw
    assert "script" not in page.tags and "<script" not in raw
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", raw)  # no CDN, no remote resource
    shown = set(pick_examples(report["answers"], 24, 0))
    missing = {a["qa_id"] for a in report["answers"] if a["qa_id"] in shown and a["image_sha"] not in report["images"]}
    assert missing  # the fixture shows an example whose image has no file
    assert all(src.startswith("data:image/png;base64,") for src in page.images) and len(page.images) == 24 - len(missing)
    assert "svg" in page.tags and page.tags.count("svg") >= 4  # inline plots
    assert "(not available)" in page.text  # the image without a file


def test_everything_from_papers_models_and_judges_is_escaped(report):
    raw, text = report["raw"], report["page"].text
    assert EVIL_ANSWER in text and EVIL_QUESTION in text  # shown as written ...
    assert "&lt;script&gt;alert(&#x27;a&#x27;)&lt;/script&gt;" in raw  # ... as text
    assert "onerror=alert(2)" not in raw.replace("onerror=alert(2)&gt;", "")
    assert "</td></table>" not in raw.replace(" &lt;/td&gt;&lt;/table&gt;", "")  # nothing closes our markup
    assert "The answer says <i>bubbles</i> & </li></ul><script>x()</script>" in text
    assert "&lt;region&gt;" in raw  # the reference's markup too


def test_paper_numbers_beside_ours_and_proxies_labelled(report):
    text, raw = report["page"].text, report["raw"]
    assert PAPER_REFERENCE["citation"] in text and "secondary summaries" in text
    paper = re.search(r"Overall quality: simple vs complex questions(.*?)Defect detection accuracy", text).group(1)
    assert re.search(r"paper GPT-4 67 77", paper)  # the paper's row of the quality table
    defect = re.search(r"Defect detection accuracy as context grows(.*?)All rows side by side", text).group(1)
    assert re.search(r"paper GPT-4 75% – – 95%", defect)
    assert "diamonds: the paper (≈75 % with no context, ≈95 % with high context)" in defect
    assert "The paper evaluated 757 questions about 77 images; this run has 200 questions about 50 images." in text
    assert raw.count("offline proxy</span>") >= 6 + 6  # every proxy metric tagged, in the rows table and its own section
    assert "not comparable" in text or "do not compare" in text
    for metric in ("quality", "relative", "features", "defect", "proxy_rouge_l", "proxy_defect", "proxy_hallucination"):
        assert f"id='m-{metric}'" in raw  # every metric by context level and type


def test_rows_side_by_side_and_only_real_differences_called(report):
    s, text = report["summary"], report["page"].text
    assert all(r in text for r in ("model", "blind", "base", "majority", "vision:gpt-4o"))
    section = re.search(r"Which differences are real(.*?)Every metric by context level", text).group(1)
    verdicts = re.findall(r"[▲▼] (\S+) better", section)[2:]  # after the two of the legend
    real = [c for c in s["comparisons"] if "model" in (c["row_a"], c["row_b"]) and c["different"]]
    assert len(verdicts) == len(real) > 0 and set(verdicts) == {c["better"] for c in real}
    assert section.count("≈") > 2  # some are not called
    for c in s["comparisons"]:
        if c["different"]:
            assert c["a"]["hi"] < c["b"]["lo"] or c["b"]["hi"] < c["a"]["lo"]


def test_failures_counted_and_gallery_subset_said(report):
    s, text = report["summary"], report["page"].text
    c = s["cells"]["model"]["quality"]["all"]
    assert c["failures"] > 0 and f"{c['failures']} of {c['n'] + c['failures']}" in text
    assert "Showing 24 of 200 questions" in text
    shown = pick_examples(report["answers"], 24, 0)
    assert len(shown) == 24 and len({a["question_type"] for a in report["answers"] if a["qa_id"] in shown}) == 4
    assert all(qa_id in text for qa_id in shown)
    assert "(no answer)" in text or "empty (the row could not answer)" in text


def test_markdown_summary(report):
    md = report["md"].read_text()
    assert md.startswith("# GlassLLaVA evaluation")
    assert "| paper | GPT-4 | 67.0 | 77.0 |" in md and "| paper | GPT-4 | 75% | – | – | 95% |" in md
    assert "offline proxy" in md and "`proxy_rouge_l`" in md and "## Judge failures" in md and "## Differences called real" in md
    assert "<script>" not in md and "(eval.html)" in md


def test_proxy_only_run_says_so(tmp_path):
    answers, judgments, images = fake_eval(tmp_path / "images", n_images=8, per_image=2, rows=("model", "majority"), llm=False)
    summary = summarise(answers, judgments, bootstrap=200, seed=0)
    html_path, md_path = write_report(summary, answers, judgments, tmp_path / "out", examples=100, images=images, paper_reference=None)
    text = _Page(html_path.read_text()).text
    assert "No LLM judge ran: every number here is an offline proxy" in text
    assert "Against the paper" not in text and "All 16 questions are shown." in text
    assert "No LLM judge ran: every number is an offline proxy" in md_path.read_text()
    html_path, _ = write_report(summary, answers, judgments, tmp_path / "paper", examples=0)
    text = _Page(html_path.read_text()).text
    assert "No LLM-judged quality in this run" in text and "an offline proxy, so the paper's points are not drawn" in text
    assert "No examples shown" in text


# ---- in a real browser ---------------------------------------------------------------------
@pytest.mark.slow
def test_report_in_headless_chromium(report, tmp_path):
    from tests.browser import _Chromium, _load, chromium_or_skip, full_page_screenshot, open_tab

    exe = chromium_or_skip()
    shots = Path(os.environ.get("GLASSLLAVA_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser = _Chromium(exe, tmp_path / "profile")
    try:
        session = open_tab(browser, 1280, 1000)
        url = report["html"].as_uri()
        facts = _load(browser, session, url, shots / "eval-report.png")
        assert facts["errors"] == [] and facts["broken"] == [] and facts["scripts"] == 0
        assert facts["images"] == len(_Page(report["raw"]).images) > 0 and facts["title"].startswith("GlassLLaVA evaluation: 200 questions, 5 rows")
        assert EVIL_ANSWER in facts["text"] and "Against the paper" in facts["text"]
        width, height = full_page_screenshot(browser, session, shots / "eval-report-full.png")
        assert width <= 1280 + 1, f"the page is {width} px wide: something overflows the viewport"
        assert height > 3000

        # a broken image is caught: the check is not vacuous
        bad = tmp_path / "bad.html"
        bad.write_text(report["raw"].replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
        assert _load(browser, session, bad.as_uri())["broken"]
    finally:
        browser.close()


def test_an_axis_over_values_that_are_all_zero_still_has_a_height():
    from glassllava.eval_report import _axis

    ymax, ticks = _axis([0.0, 0.0, None], "proxy_hallucination", rate=False)
    assert ymax > 0 and ticks[0] == 0 and ticks[-1] == ymax
