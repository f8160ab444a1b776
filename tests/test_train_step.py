"""The training step's speed levers compute what the plain step computes: packing, the chunked loss, selective
checkpointing and compiled decoder layers give the plain loss and gradients (fp32 on the CPU), a whole training
run with the levers on ends with the plain run's weights, and ``bench train --baseline`` times both paths."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from glassllava.cli import app
from glassllava.conversation import IGNORE, collate, encode, pack
from glassllava.model import build_model
from glassllava.params import ModelParams, TrainParams
from glassllava.train import AnswerLoss, Recipe, answer_cross_entropy, compile_layers, enable_checkpointing, tower_features
from glassllava.train_bench import CPU_MATRIX, run_matrix, run_train_benchmark, synthetic_conversations

from .test_model import paper_params, paper_weights  # noqa: F401  (paper_weights is a fixture)
from .test_train import data_copy, dataset_tree, model_weights, tiny_params  # noqa: F401  (dataset_tree is a fixture)

QUESTIONS = [["What does this SEM image show?"], ["Are there defects or anomalies in this micrograph?"],
             ["Describe the pores of this borosilicate glass heat treated at 640 °C for 72 h."]]
ANSWERS = [["The image shows cracks."], ["Yes. The image shows pores and bubbles."], ["No distinct pores; a smooth surface."]]


@pytest.fixture(scope="module", params=["tiny", "paper"])
def built(request):
    if request.param == "tiny":
        return build_model(ModelParams(preset="tiny"))
    return build_model(paper_params(request.getfixturevalue("paper_weights")))


def conversations(built):
    n = built.model.config.image_seq_length
    return [(encode(built.tokenizer, built.preset.chat, q, a, image_tokens=n, max_len=512), f"img{i}") for i, (q, a) in
            enumerate(zip(QUESTIONS, ANSWERS))]


def features_for(built, shas):
    gen = torch.Generator().manual_seed(0)
    size = built.preset.image_size
    pixels = torch.randn(3, 3, size, size, generator=gen)
    with torch.no_grad():
        feats = tower_features(built.model, pixels)
    return torch.stack([feats[int(s[3:])] for s in shas])


def loss_and_grads(built, batch, loss_module=None):
    model = built.model
    model.zero_grad(set_to_none=True)
    loss_module = loss_module or AnswerLoss(model)
    loss = loss_module(batch.input_ids, batch.attention_mask, batch.labels, features_for(built, batch.image_shas), batch.position_ids)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def assert_close_grads(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a)
    assert worst < tol, f"largest relative gradient difference {worst:.2e}"


# ---- packing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("row_tokens", [4096, 60])
def test_packed_rows_give_the_padded_loss_and_gradients(built, row_tokens):
    items = conversations(built)
    padded = collate(items, built.tokenizer.pad_token_id)
    packed = pack(items, built.tokenizer.pad_token_id, row_tokens)
    assert packed.attention_mask is None and packed.tokens == padded.tokens
    if row_tokens == 4096:
        assert packed.input_ids.shape[0] == 1  # all three in one row
    else:
        assert packed.input_ids.shape[0] > 1  # rows of at most 60 tokens (or one conversation)
    loss_padded, grads_padded = loss_and_grads(built, padded)
    loss_packed, grads_packed = loss_and_grads(built, packed)
    assert abs(loss_padded - loss_packed) < 1e-5
    assert_close_grads(grads_padded, grads_packed)


def test_packing_without_positions_would_let_conversations_see_each_other(built):
    """The positions are what keeps attention inside each conversation: dropping them changes the loss."""
    items = conversations(built)
    packed = pack(items, built.tokenizer.pad_token_id, 4096)
    feats = features_for(built, packed.image_shas)
    loss = AnswerLoss(built.model)
    with torch.no_grad():
        kept = float(loss(packed.input_ids, None, packed.labels, feats, packed.position_ids))
        leaked = float(loss(packed.input_ids, None, packed.labels, feats, None))
    assert abs(kept - leaked) > 1e-4


def test_pack_fills_rows_first_fit_and_restarts_positions():
    from glassllava.conversation import Encoded

    def conv(n):
        return (Encoded(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1)), 1, 1), f"c{n}")

    batch = pack([conv(5), conv(4), conv(3)], pad_id=0, row_tokens=8)
    # first fit in the given order: rows [5, 3] (full) and [4] + 4 padding; the images follow the row order
    assert batch.image_shas == ["c5", "c3", "c4"] and batch.input_ids.shape == (2, 8)
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7]]  # padding continues the last one
    assert batch.input_ids[1, 4:].tolist() == [0] * 4 and batch.labels[1, 4:].tolist() == [IGNORE] * 4  # never supervised
    assert batch.tokens == 12
    with pytest.raises(ValueError, match="unsupervised"):
        pack([(Encoded([1, 2], [1, 2], 1, 1), "x")], pad_id=0, row_tokens=8)


# ---- the chunked loss -----------------------------------------------------------------------------
def test_the_chunked_loss_equals_the_whole_loss_with_the_same_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    target = torch.randint(0, 50, (37,))
    whole = answer_cross_entropy(head, hidden, target)
    g_hidden, g_head = torch.autograd.grad(whole, [hidden, head.weight])
    for chunk in (1, 8, 36, 37, 100):
        part = answer_cross_entropy(head, hidden, target, chunk)
        c_hidden, c_head = torch.autograd.grad(part, [hidden, head.weight])
        assert abs(float(whole.detach()) - float(part.detach())) < 1e-6
        assert torch.allclose(g_hidden, c_hidden, atol=1e-7) and torch.allclose(g_head, c_head, atol=1e-7)


def test_the_chunked_loss_in_the_model_gives_the_plain_gradients(built):
    batch = collate(conversations(built), built.tokenizer.pad_token_id)
    plain = loss_and_grads(built, batch)
    chunked = loss_and_grads(built, batch, AnswerLoss(built.model, loss_chunk=3))
    assert abs(plain[0] - chunked[0]) < 1e-5
    assert_close_grads(plain[1], chunked[1])


# ---- selective checkpointing ----------------------------------------------------------------------
def test_checkpointing_every_second_layer_sets_the_flags_and_keeps_the_gradients():
    built = build_model(ModelParams(preset="tiny"))
    batch = collate(conversations(built), built.tokenizer.pad_token_id)
    built.model.train()
    plain = loss_and_grads(built, batch)
    layers = built.model.model.language_model.layers
    enable_checkpointing(built.model, 2)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    selective = loss_and_grads(built, batch)
    enable_checkpointing(built.model, 1)
    assert all(layer.gradient_checkpointing for layer in layers)
    full = loss_and_grads(built, batch)
    enable_checkpointing(built.model, 0)
    assert not any(layer.gradient_checkpointing for layer in layers)
    for other in (selective, full):
        assert abs(plain[0] - other[0]) < 1e-6
        assert_close_grads(plain[1], other[1])


# ---- compiled decoder layers ----------------------------------------------------------------------
@pytest.mark.slow  # ~40 s: inductor compiles the decoder layer for the CPU (needs a C++ compiler)
def test_compiled_decoder_layers_give_the_eager_loss_and_gradients():
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler (cc/gcc); none on PATH")
    built = build_model(ModelParams(preset="tiny"))
    batch = collate(conversations(built), built.tokenizer.pad_token_id)
    built.model.train()
    eager = loss_and_grads(built, batch)
    assert compile_layers(built.model) == 2
    compiled = loss_and_grads(built, batch)
    assert abs(eager[0] - compiled[0]) < 1e-5
    assert_close_grads(eager[1], compiled[1], tol=1e-4)


# ---- a whole run ------------------------------------------------------------------------------------
def test_a_run_with_packing_the_chunked_loss_and_selective_checkpointing_ends_with_the_plain_weights(dataset_tree, tmp_path):
    plain = Recipe(tiny_params(precision="fp32", checkpoint_every_steps=None), data_copy(dataset_tree, tmp_path / "plain"), track=False)
    plain.run()
    levers = dict(precision="fp32", checkpoint_every_steps=None, packing=True, pack_tokens=256, loss_chunk=5, gradient_checkpointing=True,
                  gradient_checkpointing_every_n_layers=2)
    fast = Recipe(tiny_params(**levers), data_copy(dataset_tree, tmp_path / "fast"), track=False)
    report = fast.run()
    assert report.trained and report.tokens_per_s > 0
    assert [layer.gradient_checkpointing for layer in fast.hf.model.language_model.layers] == [True, False]
    a, b = model_weights(plain.model_out), model_weights(fast.model_out)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"weights differ by up to {worst:.2e} after {len(report.loss_curve)} steps"


# ---- bench train ------------------------------------------------------------------------------------
def test_synthetic_conversations_have_the_asked_lengths_and_half_the_text_supervised():
    convs = synthetic_conversations(20, image_tokens=5, image_token_id=7, text_tokens=40, spread=0.5, vocab=1000, seed=1)
    lengths = [len(c.input_ids) for c in convs]
    assert min(lengths) >= 4 + 5 + 20 and max(lengths) <= 4 + 5 + 60 and len(set(lengths)) > 3
    for c in convs:
        assert c.input_ids[4:9] == [7] * 5 and c.labels[0] == IGNORE
        text = len(c.input_ids) - 9
        assert c.supervised == text - text // 2


def test_bench_train_times_the_recipe_beside_the_plain_step_and_they_agree():
    train = TrainParams(precision="fp32", packing=True, pack_tokens=80, loss_chunk=16, gradient_checkpointing=True,
                        gradient_checkpointing_every_n_layers=2, grad_accum=2)
    result = run_train_benchmark(ModelParams(preset="tiny"), train, batch=3, steps=2, warmup=1, text_tokens=30, spread=0.5, baseline=True)
    assert result["loss_agreement"]["abs_diff"] < 1e-4
    for path in ("baseline", "recipe"):
        r = result[path]
        assert r["loss_finite"] and r["samples_per_s"] > 0 and 0 < r["mfu"] < 1 and r["peak_mem_gib"] > 0
    assert result["speedup"] == pytest.approx(result["recipe"]["samples_per_s"] / result["baseline"]["samples_per_s"], rel=1e-2)
    assert result["levers"] == {"packing": True, "pack_tokens": 80, "loss_chunk": 16, "compile": False, "gradient_checkpointing": True,
                                "every_n_layers": 2}
    assert result["grad_accum"] == 2 and result["precision"] == "fp32"


def test_the_cli_writes_the_benchmark_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "train.json"
    result = CliRunner().invoke(app, ["bench", "train", "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--text-tokens", "20",
                                      "--baseline", "--packing", "--loss-chunk", "8", "--precision", "fp32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["levers"]["packing"] and data["levers"]["loss_chunk"] == 8 and "baseline" in data and "speedup" in data


@pytest.mark.slow  # ~15 s: one setting in a child process
def test_the_matrix_runs_each_setting_in_its_own_process_and_writes_after_each(tmp_path):
    results = run_matrix(CPU_MATRIX[:1], tmp_path, steps=1, warmup=1, text_tokens=20, timeout_s=300)
    (written,) = tmp_path.glob("train-*.json")
    on_disk = json.loads(written.read_text())
    name = CPU_MATRIX[0][0]
    assert on_disk["settings"][name]["samples_per_s"] > 0, on_disk["settings"][name]
    assert results["settings"][name]["loss_agreement"]["abs_diff"] < 1e-3 and on_disk["settings"][name]["wall_s"] > 0


@pytest.mark.slow  # ~1 min: two 2-process runs
@pytest.mark.parametrize("distributed", ["fsdp", "ddp"])
def test_the_levers_under_two_processes_end_with_the_plain_weights(dataset_tree, tmp_path, distributed):
    """FSDP2 shards each decoder layer and the root: the chunked loss recomputes the head inside the backward
    pass, and checkpointed layers re-gather their shards; DDP reduces the same gradients."""
    import subprocess

    from .test_train import write_params

    def torchrun(name: str, **levers):
        layout = data_copy(dataset_tree, tmp_path / name)
        params = write_params(tiny_params(epochs=1.0, sample_answers=0, precision="fp32", checkpoint_every_steps=None, distributed=distributed,
                                          **levers), tmp_path / f"{name}.yaml")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "glassllava.train",
               "--params", str(params), "--data", str(layout.root), "--no-register"]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return model_weights(layout.model)

    plain = torchrun("plain")
    fast = torchrun("fast", packing=True, pack_tokens=256, loss_chunk=5, gradient_checkpointing=True, gradient_checkpointing_every_n_layers=2)
    assert plain.keys() == fast.keys()
    worst = max(float((plain[k] - fast[k]).abs().max()) for k in plain)
    assert worst < 1e-4, f"weights differ by up to {worst:.2e}"


@pytest.mark.parametrize("preset", ["paper", "paper-lora"])
def test_bench_train_on_random_paper_shapes_runs_both_paths_as_on_a_gpu(preset, monkeypatch):
    """The GPU matrix's code path (random LLaVA shapes built where they run, the image token one row past the text
    vocabulary, LoRA through peft) at a width a CPU test affords; a random model's loss is about ln(vocabulary)."""
    import math

    import glassllava.model as model_module

    monkeypatch.setitem(model_module.__dict__, "OPENLLAMA_7B", {**model_module.OPENLLAMA_7B, "hidden_size": 64, "intermediate_size": 128,
                                                                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4})
    monkeypatch.setitem(model_module.__dict__, "CLIP_VIT_L14", {**model_module.CLIP_VIT_L14, "hidden_size": 32, "intermediate_size": 64,
                                                                "num_hidden_layers": 2, "num_attention_heads": 2})
    train = TrainParams(precision="fp32", packing=True, pack_tokens=600, loss_chunk=64, gradient_checkpointing=True, gradient_checkpointing_every_n_layers=2)
    result = run_train_benchmark(ModelParams(preset=preset, lora_r=4), train, batch=2, steps=1, warmup=1, text_tokens=20, spread=0.5,
                                 random_init=True, baseline=True)
    assert result["image_tokens"] == 256 and result["loss_agreement"]["abs_diff"] < 1e-4
    assert abs(result["loss_agreement"]["plain"] - math.log(32064)) < 0.5
    assert result["recipe"]["loss_finite"] and result["baseline"]["loss_finite"]
    assert set(result["recipe"]["breakdown"]) == {"forward_s", "backward_s", "optimizer_s"}
    if preset == "paper-lora":
        assert result["trainable_params"] < result["lm_matmul_params"] / 10  # adapters and the projector only
