"""Answers from a saved model: batched (left-padded) = one by one, in order; the blind baseline; ``glassllava ask``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from glassllava.cli import app
from glassllava.generate import answer_questions, load, stream_answer
from glassllava.model import build_model, save_model
from glassllava.params import ModelParams

QUESTIONS = [
    "Describe the pores and cracks in this glass heat treated at 640 °C for 72 h.",
    "Yes?",
    "What does this SEM image show?",
    "Are there defects or anomalies in this micrograph?",
    "Is it borosilicate?",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny model whose greedy answers are not empty: a random tiny Llava with tied embeddings only repeats
    the last prompt token ("\\n"), so every matrix is scaled up to give varied, image- and question-dependent tokens."""
    built = build_model(ModelParams(preset="tiny"), seed=0)
    with torch.no_grad():
        for name, p in built.model.named_parameters():
            if "vision_tower" not in name and p.dim() > 1:
                p.mul_(6.0)
    return save_model(built, tmp_path_factory.mktemp("generate") / "model", generation={"max_new_tokens": 12})


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load(model_dir, device="cpu")


def test_load_serves_bf16_where_the_device_computes_it_natively(model_dir):
    from glassllava.model import inference_dtype

    model, _ = load(model_dir, device="cpu")
    assert model.dtype == inference_dtype("cpu") and not model.training
    assert load(model_dir, device="cpu", dtype=torch.float32)[0].dtype == torch.float32


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    images = [Image.effect_noise((64, 48), 70).convert("RGB"), Image.new("RGB", (40, 30), (200, 10, 10)),
              Image.linear_gradient("L").resize((50, 50)).convert("RGB")]
    paths = []
    for i, image in enumerate(images):
        image.save(folder / f"m{i}.png")
        paths.append(folder / f"m{i}.png")
    return paths


def items(pictures) -> list[dict]:
    return [{"image": pictures[i % len(pictures)] if i % 2 else Image.open(pictures[i % len(pictures)]), "question": q}
            for i, q in enumerate(QUESTIONS)]


def test_batched_left_padded_answers_equal_one_by_one_and_keep_the_order(loaded, pictures):
    model, processor = loaded
    batch = answer_questions(model, processor, items(pictures), max_new_tokens=8, batch_size=3)  # two batches, lengths mixed
    single = [answer_questions(model, processor, [item], max_new_tokens=8)[0] for item in items(pictures)]
    assert len(batch) == len(QUESTIONS)
    assert [(a.text, a.new_tokens) for a in batch] == [(a.text, a.new_tokens) for a in single]
    assert all(a.text for a in batch) and all(0 < a.new_tokens <= 8 and a.seconds > 0 for a in batch)
    assert len({a.text for a in batch}) > 1  # the answers depend on the question (else order would not be tested)
    assert not model.training


def test_blank_image_answers_as_for_a_grey_picture_of_the_same_size(loaded, pictures):
    model, processor = loaded
    model.train()
    blind = answer_questions(model, processor, items(pictures), max_new_tokens=6, blank_image=True)
    assert model.training  # the caller's mode is restored
    model.eval()
    greys = [{"image": Image.new("RGB", Image.open(pictures[i % len(pictures)]).size, (128, 128, 128)), "question": q}
             for i, q in enumerate(QUESTIONS)]
    assert [a.text for a in blind] == [a.text for a in answer_questions(model, processor, greys, max_new_tokens=6)]


def test_the_streamed_answer_is_the_greedy_answer(loaded, pictures):
    model, processor = loaded
    streamed = "".join(stream_answer(model, processor, Image.open(pictures[0]), QUESTIONS[2], max_new_tokens=8)).strip()
    greedy = answer_questions(model, processor, [{"image": pictures[0], "question": QUESTIONS[2]}], max_new_tokens=8)[0].text
    assert streamed and streamed == greedy


# ---- glassllava ask ------------------------------------------------------------------------------
def test_ask_streams_an_answer_and_json_gives_the_answer_with_its_timing(model_dir, loaded, pictures):
    runner = CliRunner()
    args = ["ask", "--model", str(model_dir), "--image", str(pictures[0]), "--max-new-tokens", "8", QUESTIONS[2]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = answer_questions(*loaded, [{"image": pictures[0], "question": QUESTIONS[2]}], max_new_tokens=8)[0].text
    assert expected and result.stdout.strip() == expected
    result = runner.invoke(app, [*args[:-1], "--json", QUESTIONS[2]])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["answer"] == expected and got["question"] == QUESTIONS[2] and got["answer_tokens"] > 0
    assert {"load_s", "first_token_s", "generate_s", "tokens_per_s"} <= set(got)
    assert all(isinstance(got[k], (int, float)) and got[k] >= 0 for k in ("load_s", "first_token_s", "generate_s", "tokens_per_s"))


def ask_unreadable(model_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return CliRunner().invoke(app, ["ask", "--model", str(model_dir), "--image", str(bad), "What is this?"]), bad


def test_ask_with_an_unreadable_image_fails_with_a_message_and_exit_code_1(model_dir, tmp_path):
    result, bad = ask_unreadable(model_dir, tmp_path)
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert "Traceback" not in result.output and not result.stdout.strip()
    message = " ".join(result.stderr.split())
    assert message.startswith(f"error: {bad}: not an image I can read (cannot identify image file"), result.stderr


def test_ask_with_an_unreadable_image_fails_in_one_line(model_dir, tmp_path):
    result, _ = ask_unreadable(model_dir, tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
