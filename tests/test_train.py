"""The training recipe on a tiny dataset: what a run writes and logs, exact resume after SIGKILL, a corrupt checkpoint,
real 2-process DDP, LoRA, and refusing to train on nothing. Every MLflow store is the private one of ``mlflow_uri``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from glassllava import tracking, train
from glassllava.dataset import build_dataset
from glassllava.params import DataLayout, DatasetParams, ModelParams, Params, TrainParams
from glassllava.schemas import CONVERSATIONS_SCHEMA, read_table, table_from_rows, write_table
from glassllava.train import Checkpoints, Recipe, TrainingError

from .test_dataset import make_qa_data
from .test_model import paper_params, paper_weights  # noqa: F401  (paper_weights is a fixture)

# 2 alignment conversations (1 step), 16 single-turn training conversations in batches of 2 (8 steps an epoch, 2 epochs):
# 17 optimizer steps, checkpoints at steps 3, 6, 9, 12, 15.
TRAIN = dict(batch_size=2, stage1_epochs=1.0, epochs=2.0, checkpoint_every_steps=3, log_every_steps=2, sample_answers=1, max_new_tokens=4,
             eval_conversations=2)
STEPS = 1 + 16


def tiny_params(**train) -> Params:
    return Params(model=ModelParams(preset="tiny"), train=TrainParams(**(TRAIN | train)))


@pytest.fixture(scope="module")
def dataset_tree(tmp_path_factory) -> Path:
    """One tiny dataset stage output (paper a: 2 panels x 8 QA records for training; paper b held out), built once."""
    layout = make_qa_data(tmp_path_factory.mktemp("tree") / "data")
    build_dataset(DatasetParams(multi_turn=False), layout)
    return layout.dataset


def data_copy(dataset_tree: Path, root: Path) -> DataLayout:
    """A fresh data root holding a copy of the dataset (conversations point at the tree's images by absolute path)."""
    layout = DataLayout(root / "data")
    shutil.copytree(dataset_tree, layout.dataset)
    return layout


def write_params(params: Params, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")), encoding="utf-8")
    return path


def model_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"weights differ: {differ}"


@pytest.fixture(scope="module")
def reference(dataset_tree, tmp_path_factory) -> dict:
    """The uninterrupted run: final weights and loss curve (no MLflow)."""
    root = tmp_path_factory.mktemp("reference")
    recipe = Recipe(tiny_params(), data_copy(dataset_tree, root), track=False)
    report = recipe.run()
    assert report.trained and report.resumed_from_step is None and len(report.loss_curve) == STEPS
    return {"weights": model_weights(recipe.model_out), "loss_curve": report.loss_curve}


def git_repo(root: Path) -> str:
    """``root`` as a git work tree with one commit (the run's git_sha tag)."""
    who = {"NAME": "t", "EMAIL": "t@example.org"}
    env = os.environ | {f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER") for key, value in who.items()}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "test"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, env=env, capture_output=True)
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# ---- one whole run ---------------------------------------------------------------------------------
@pytest.mark.slow  # ~10 s: registering logs an MLflow pyfunc model (first import of mlflow.pyfunc)
def test_a_tiny_run_writes_the_model_the_report_and_registers_a_candidate(dataset_tree, tmp_path, mlflow_uri):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    sha = git_repo(tmp_path)
    layout = data_copy(dataset_tree, tmp_path)
    recipe = Recipe(tiny_params(), layout)
    report = recipe.run()

    # the model: Hugging Face layout, loadable with plain transformers, the weights trained in memory
    loaded = AutoModelForImageTextToText.from_pretrained(layout.model)
    assert AutoProcessor.from_pretrained(layout.model).chat_template
    mine = {k: v for k, v in recipe.built.model.state_dict().items() if not k.startswith("model.vision_tower")}
    saved = loaded.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in mine.items())
    provenance = json.loads((layout.model / "glassllava.json").read_text())
    assert provenance["preset"] == "tiny" and provenance["mlflow_run_id"] == report.mlflow_run_id

    # report, metrics, loss curve
    saved_report = json.loads((layout.train / "report.json").read_text())
    assert saved_report["trained"] and saved_report["model_version"] == 1 and saved_report["mlflow_run_id"] == report.mlflow_run_id
    assert [s["name"] for s in saved_report["stages"]] == ["align", "instruct"] and [s["steps"] for s in saved_report["stages"]] == [1, 16]
    assert [p["step"] for p in saved_report["loss_curve"]] == list(range(1, STEPS + 1))
    assert saved_report["batch"] == {"reading": "per_device", "per_device": 2, "micro_batch": 2, "grad_accum": 1, "world": 1, "global": 2}
    assert len(saved_report["samples"]) == 1 and set(saved_report["samples"][0]) >= {"question", "answer", "reference"}
    metrics = json.loads((layout.train / "metrics.json").read_text())
    assert set(metrics) >= {"samples_per_s", "tokens_per_s", "mfu", "final_loss", "eval_loss"} and metrics["mfu"] > 0
    assert metrics["final_loss"] == saved_report["loss_curve"][-1]["loss"]
    rows = (layout.train / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,stage,epoch,loss,lr" and len(rows) == STEPS + 1 and rows[-1].startswith(f"{STEPS},instruct,1,")
    assert not list((layout.train / "checkpoints").rglob("*.pt"))  # cleared once the model is saved
    assert len(list((layout.train / "features").rglob("*.pt"))) == 3  # one feature file per image (2 train + 1 eval)

    # MLflow: params, metrics at their steps, lineage tags; the model registered as version 1 @candidate
    client = MlflowClient(mlflow_uri)
    run = client.get_run(report.mlflow_run_id)
    assert run.info.status == "FINISHED" and len(runs(mlflow_uri)) == 1
    params = run.data.params
    assert params["train.lr"] == "0.0001" and params["train.batch_size"] == "2" and params["model.preset"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "instruct/loss")
    assert [m.step for m in history] == [2, 4, 6, 8, 10, 12, 14, 16, 17]
    by_step = {p["step"]: p["loss"] for p in saved_report["loss_curve"]}
    assert all(abs(m.value - by_step[m.step]) < 1e-5 for m in history)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "instruct/eval_loss")] == [9, 17]
    tags = run.data.tags
    assert tags["git_sha"] == sha and tags["dataset_hash"] == tracking.content_hash(layout.dataset)
    assert tags["global_batch"].startswith("2 per device x 1 processes = 2") and tags["preset"] == "tiny"
    version = tracking.get_alias_version("glassllava", "candidate")
    assert version is not None and str(version.version) == "1" and version.run_id == report.mlflow_run_id


# ---- exact resume --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(dataset_tree, reference, tmp_path, mlflow_uri):
    layout = data_copy(dataset_tree, tmp_path)
    params = write_params(tiny_params(), tmp_path / "params.yaml")
    cmd = [sys.executable, "-m", "glassllava.train", "--params", str(params), "--data", str(layout.root), "--no-register"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "killed.log", "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while proc.poll() is None and not list(layout.train.glob("checkpoints/*/latest.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_log = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself before the kill:\n{killed_log[-2000:]}"
    assert not (layout.train / "report.json").exists() and not (layout.model / "model.safetensors").exists()
    step = json.loads(next(layout.train.glob("checkpoints/*/latest.json")).read_text())["step"]
    assert 3 <= step < STEPS

    # run it again to completion: the same entry point and arguments, in this process (a third interpreter would
    # cost ~15 s of imports on a 2-core machine; the kill above is the part that needs a real process)
    threads = torch.get_num_threads()
    try:
        assert train.main(cmd[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((layout.train / "report.json").read_text())
    assert report["resumed_from_step"] == step and report["trained"]
    assert report["loss_curve"] == reference["loss_curve"]
    assert_same_weights(model_weights(layout.model), reference["weights"])  # bit for bit: no tolerance
    # the resumed process went on with the killed one's MLflow run: one run in the store, now finished
    (run,) = runs(mlflow_uri)
    assert run.info.run_id == report["mlflow_run_id"] and run.info.status == "FINISHED"


def test_stopping_in_process_and_resuming_gives_the_uninterrupted_weights(dataset_tree, reference, tmp_path):
    layout = data_copy(dataset_tree, tmp_path)
    with pytest.raises(KeyboardInterrupt, match="stopped after 10 steps"):
        Recipe(tiny_params(), layout, track=False, stop_after_steps=10).run()  # epoch 2 of stage 2, 1 step after a checkpoint
    report = Recipe(tiny_params(), layout, track=False).run()
    assert report.resumed_from_step == 9 and report.loss_curve == reference["loss_curve"]
    assert_same_weights(model_weights(layout.model), reference["weights"])


def test_the_clock_rule_checkpoints_and_resumes_exactly(dataset_tree, reference, tmp_path):
    """checkpoint_every_minutes alone (no step rule): a checkpoint is taken when the interval has passed, and resuming
    from it ends with the uninterrupted weights. An interval of ~0 makes every step due."""
    layout = data_copy(dataset_tree, tmp_path)
    clock = dict(checkpoint_every_steps=None, checkpoint_every_minutes=1e-9)
    with pytest.raises(KeyboardInterrupt, match="stopped after 5 steps"):
        Recipe(tiny_params(**clock), layout, track=False, stop_after_steps=5).run()
    (index,) = layout.train.glob("checkpoints/*/latest.json")
    assert json.loads(index.read_text())["step"] == 5
    report = Recipe(tiny_params(**clock), layout, track=False).run()
    assert report.resumed_from_step == 5 and report.loss_curve == reference["loss_curve"]
    assert_same_weights(model_weights(layout.model), reference["weights"])


def test_without_a_due_rule_no_checkpoint_is_written(dataset_tree, tmp_path):
    layout = data_copy(dataset_tree, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Recipe(tiny_params(checkpoint_every_steps=None, checkpoint_every_minutes=60), layout, track=False, stop_after_steps=12).run()
    assert not list(layout.train.glob("checkpoints/*/latest.json"))


@pytest.mark.parametrize(("device", "precision", "expected"), [
    ("cpu", "fp32", False), ("cuda:0", "fp32", False), ("cpu", "bf16-autocast", True), ("cuda:0", "auto", True),
])
def test_precision_reading(device, precision, expected):
    assert train.uses_bf16_autocast(device, precision) is expected


def test_auto_precision_on_cpu_follows_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert train.uses_bf16_autocast("cpu", "auto") is native


def test_a_corrupt_checkpoint_is_not_loaded_and_training_starts_over(dataset_tree, reference, tmp_path, caplog):
    layout = data_copy(dataset_tree, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Recipe(tiny_params(), layout, track=False, stop_after_steps=4).run()
    (index,) = layout.train.glob("checkpoints/*/latest.json")
    checkpoint = index.parent / json.loads(index.read_text())["file"]
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed: still a loadable zip, perhaps, but not the bytes that were written
    checkpoint.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="glassllava.train"):
        report = Recipe(tiny_params(), layout, track=False).run()
    assert any("not used" in r.getMessage() and "sha256 does not match" in r.getMessage() for r in caplog.records)
    assert report.trained and report.resumed_from_step is None
    assert report.loss_curve == reference["loss_curve"]
    assert_same_weights(model_weights(layout.model), reference["weights"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing", "bad-index"])
def test_checkpoints_refuse_a_damaged_file(tmp_path, damage, caplog):
    ckpts = Checkpoints(tmp_path / "ckpt")
    state = {"global_step": 7, "weights": {"w": torch.arange(1000, dtype=torch.float32)}}
    path = ckpts.save(state, 7)
    assert torch.equal(ckpts.load()["weights"]["w"], state["weights"]["w"])
    ckpts.save(state | {"global_step": 8}, 8)
    assert not path.exists()  # the older checkpoint goes once the newer is in place
    path = tmp_path / "ckpt" / "step-0000008.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "missing":
        path.unlink()
    else:
        (tmp_path / "ckpt" / "latest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="glassllava.train"):
        assert ckpts.load() is None
    assert any("training starts from the beginning" in r.getMessage() for r in caplog.records)


# ---- distributed ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_on_two_processes_ends_with_identical_weights_and_one_mlflow_run(dataset_tree, tmp_path, mlflow_uri):
    layout = data_copy(dataset_tree, tmp_path)
    params = write_params(tiny_params(epochs=1.0, sample_answers=0), tmp_path / "params.yaml")
    dump = tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "glassllava.train",
           "--params", str(params), "--data", str(layout.root), "--no-register"]
    env = os.environ | {"GLASSLLAVA_DUMP_WEIGHTS": str(dump)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    rank0, rank1 = (torch.load(dump / f"rank-{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(rank0, rank1)
    # it trained: the language model moved away from its (seeded) initial weights
    from glassllava.model import build_model

    initial = dict(build_model(ModelParams(preset="tiny"), seed=0).model.named_parameters())
    up = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(initial[up], rank0[up])
    saved = model_weights(layout.model)
    assert all(torch.equal(saved[k], rank0[k]) for k in saved if k in rank0)
    report = json.loads((layout.train / "report.json").read_text())
    assert report["world"] == 2 and report["batch"]["global"] == 4
    assert [s["steps"] for s in report["stages"]] == [1, 4]  # 16 conversations, 2 per rank and step
    (run,) = runs(mlflow_uri)  # rank 1 opened no run
    assert run.info.run_id == report["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["global_batch"].startswith("2 per device x 2 processes = 4")
    assert tracking.get_alias_version("glassllava", "candidate") is None  # --no-register



@pytest.mark.slow
def test_fsdp_on_two_processes_resumes_from_its_sharded_checkpoint_to_the_uninterrupted_weights(dataset_tree, tmp_path):
    """FSDP2 on CPU (gloo): a run stopped after 3 steps resumes from its torch.distributed.checkpoint shards and ends
    where an uninterrupted FSDP run ends; the saved model is a plain transformers model."""
    from transformers import AutoModelForImageTextToText

    def torchrun(layout: DataLayout, params: Path, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "glassllava.train",
               "--params", str(params), "--data", str(layout.root), "--no-register", *extra]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)

    params = tiny_params(epochs=1.0, sample_answers=0, checkpoint_every_steps=2, distributed="fsdp")
    params_file = write_params(params, tmp_path / "params.yaml")
    whole = data_copy(dataset_tree, tmp_path / "whole")
    done = torchrun(whole, params_file)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    split = data_copy(dataset_tree, tmp_path / "split")
    stopped = torchrun(split, params_file, "--stop-after-steps", "3")
    assert stopped.returncode != 0 and list((split.train / "checkpoints").glob("*/dcp-*")), (stopped.stdout + stopped.stderr)[-3000:]
    resumed = torchrun(split, params_file)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    report = json.loads((split.train / "report.json").read_text())
    assert report["resumed_from_step"] == 2 and report["world"] == 2
    a, b = model_weights(whole.model), model_weights(split.model)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert type(AutoModelForImageTextToText.from_pretrained(split.model)).__name__ == "FastVlmForConditionalGeneration"

# ---- LoRA ------------------------------------------------------------------------------------------
def test_a_paper_lora_run_trains_the_adapters_and_the_projector_and_saves_a_merged_model(dataset_tree, paper_weights, tmp_path):
    from transformers import AutoModelForImageTextToText

    from glassllava.model import apply_lora, build_model

    model_params = paper_params(paper_weights, "paper-lora", lora_r=4, lora_alpha=8)
    initial = build_model(model_params, seed=0)
    lora = apply_lora(build_model(model_params, seed=0).model, model_params)
    n_projector = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad and "multi_modal_projector" in n)
    n_trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    layout = data_copy(dataset_tree, tmp_path)
    params = Params(model=model_params, train=TrainParams(**(TRAIN | dict(batch_size=8, epochs=1.0, sample_answers=0))))
    report = Recipe(params, layout, track=False).run()
    assert [(s["name"], s["trainable_params"]) for s in report.stages] == [("align", n_projector), ("instruct", n_trainable)]
    loaded = AutoModelForImageTextToText.from_pretrained(layout.model)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration" and not any("lora" in n for n, _ in loaded.named_parameters())
    before, after = initial.model.state_dict(), loaded.state_dict()
    assert not torch.equal(before["model.multi_modal_projector.linear_1.weight"], after["model.multi_modal_projector.linear_1.weight"])
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q], after[q])  # the trained adapters are merged into the saved weights
    assert torch.equal(before["model.language_model.embed_tokens.weight"], after["model.language_model.embed_tokens.weight"])


# ---- nothing to train on -------------------------------------------------------------------------
def test_no_training_shards_raise_before_any_work(dataset_tree, tmp_path, mlflow_uri):
    layout = data_copy(dataset_tree, tmp_path)
    for shard in layout.dataset.glob("train-*.parquet"):
        shard.unlink()
    with pytest.raises(TrainingError, match=r"no training conversations in .*dataset: run the dataset stage first"):
        Recipe(tiny_params(), layout)
    empty = layout.dataset / "train-00000.parquet"
    write_table(table_from_rows([], CONVERSATIONS_SCHEMA, empty.name), empty, CONVERSATIONS_SCHEMA)
    with pytest.raises(TrainingError, match=r"no training conversations in .*dataset: its train shards are empty"):
        Recipe(tiny_params(), layout)
    assert runs(mlflow_uri) == [] and tracking.get_alias_version("glassllava", "candidate") is None


def test_conversations_that_all_are_too_long_raise_and_nothing_is_registered(dataset_tree, tmp_path, mlflow_uri):
    layout = data_copy(dataset_tree, tmp_path)
    for shard in layout.dataset.glob("train-*.parquet"):  # every first answer longer than max_seq_len=64 tokens
        rows = read_table(shard, CONVERSATIONS_SCHEMA).to_pylist()
        for row in rows:
            row["turns"][0]["answer"] = " ".join([row["turns"][0]["answer"]] * 8)
        write_table(table_from_rows(rows, CONVERSATIONS_SCHEMA, shard.name), shard, CONVERSATIONS_SCHEMA)
    recipe = Recipe(tiny_params(max_seq_len=64), layout)
    too_long = r"none of the training conversations fits .*first turn alone needs \d+ tokens, more than max_seq_len=64"
    with pytest.raises(TrainingError, match=too_long):
        recipe.run()
    assert runs(mlflow_uri) == [] and tracking.get_alias_version("glassllava", "candidate") is None
    assert not layout.model.exists() and not (layout.train / "report.json").exists()
