"""glassllava.tracking on a private sqlite store per test (the ``mlflow_uri`` fixture copies a migrated template)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from glassllava import tracking
from glassllava.tracking import (
    content_hash,
    download_model,
    dvc_out_hash,
    get_alias_version,
    git_dirty,
    git_sha,
    is_secret_key,
    lineage_tags,
    register_model,
    start_run,
    tracking_uri,
)

DVC_LOCK = """\
schema: '2.0'
stages:
  dataset:
    cmd: python -m flows.dataset
    deps:
    - path: data/qa
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
    outs:
    - path: data/dataset
      hash: md5
      md5: 3f2c1e0d9b8a7f6e5d4c3b2a19081726.dir
      size: 1234
      nfiles: 3
"""


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    (path / "dvc.yaml").write_text("stages: {}\n")
    (path / "dvc.lock").write_text(DVC_LOCK)
    for cmd in (["init", "-q"], ["add", "dvc.yaml", "dvc.lock"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, env=env, capture_output=True)
    return path


def _fake_model(path: Path) -> Path:
    """A Hugging Face layout folder with arbitrary bytes (registering never loads it)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}))
    (path / "model.safetensors").write_bytes(os.urandom(4096) + b"\x00\xff" * 100)
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    (path / "processor_config.json").write_text("{}")
    (path / "extra").mkdir()
    (path / "extra" / "chat_template.jinja").write_text("{{ messages }}")
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- tracking URI ------------------------------------------------------------------------------------------------


def test_tracking_uri_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("GLASSLLAVA_REPO", str(tmp_path))
    assert tracking_uri() == "http://mlflow.internal:5000"


def test_tracking_uri_is_absolute_under_repo_root_from_nested_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GLASSLLAVA_REPO", raising=False)
    repo = tmp_path / "repo"
    nested = repo / "data" / "train"
    nested.mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(nested)
    uri = tracking_uri()
    assert uri == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()
    # .git alone also marks the root; no marker at all: the current directory
    (repo / "dvc.yaml").unlink()
    (repo / ".git").mkdir()
    assert tracking_uri() == f"sqlite:///{repo.resolve()}/mlflow.db"


def test_tracking_uri_from_glassllava_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GLASSLLAVA_REPO", str(tmp_path / "checkout"))
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'checkout').resolve()}/mlflow.db"


# --- runs ----------------------------------------------------------------------------------------------------------


def test_run_records_params_metrics_tags_and_artifacts(mlflow_uri, tmp_path, monkeypatch):
    repo = _git_repo(tmp_path / "repo")
    tags = lineage_tags(repo)
    assert tags["git_sha"] == git_sha(repo) and len(tags["git_sha"]) == 40
    assert tags["git_dirty"] == "false"
    assert tags["data_md5"] == "3f2c1e0d9b8a7f6e5d4c3b2a19081726.dir"
    (tmp_path / "report.json").write_text('{"loss": 0.5}')
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.txt").write_text("step 5")

    elsewhere = tmp_path / "stage-cwd"  # a DVC stage or torchrun rank in another directory
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    params = {"train": {"lr": 1e-4, "epochs": 3.0, "schedule": "cosine"}, "qa": {"slots": ["a@none", "b@low"]}, "long": "x" * 7000}
    with start_run(params, {**tags, "stage": "train"}, experiment="glassllava-test", run_name="nightly") as run:
        assert mlflow.active_run().info.run_id == run.run_id
        run.log_metrics({"loss": 1.25, "lr": 1e-4}, step=0)
        run.log_metrics({"loss": 0.5, "bad": "n/a"}, step=5)
        run.log_dict({"resolved": params["train"]}, "config/params.json")
        run.log_text("USER: <image> what is this? ASSISTANT: a crack", "samples/sample0.txt")
        run.log_table([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}], "samples/answers.json")
        run.log_artifact(tmp_path / "report.json")
        run.log_artifact(tmp_path / "ckpt", "checkpoints")
        run.set_tags({"best_step": 5})
    assert run.url is None  # sqlite: no UI link

    client = MlflowClient(mlflow_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "nightly"
    assert got.data.params["train.lr"] == "0.0001" and got.data.params["train.schedule"] == "cosine"
    assert json.loads(got.data.params["qa.slots"]) == ["a@none", "b@low"]
    assert len(got.data.params["long"]) == 6000  # MLflow's limit
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(0, 1.25), (5, 0.5)]
    assert "bad" not in got.data.metrics
    assert got.data.tags["git_sha"] == tags["git_sha"] and got.data.tags["data_md5"] == tags["data_md5"]
    assert got.data.tags["stage"] == "train" and got.data.tags["best_step"] == "5"

    # artifacts live beside the db, in mlruns/<experiment>, not in the current directory
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.artifact_location == (tmp_path / "mlflow" / "mlruns" / "glassllava-test").as_uri()
    names = {a.path for a in client.list_artifacts(run.run_id)} | {a.path for a in client.list_artifacts(run.run_id, "samples")}
    assert {"config", "samples", "report.json", "checkpoints", "samples/sample0.txt", "samples/answers.json"} <= names
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="checkpoints", dst_path=str(tmp_path / "dl")))
    assert (local / "state.txt").read_text() == "step 5"
    assert list(elsewhere.iterdir()) == []  # no ./mlflow.db, no ./mlruns


def test_run_url_only_for_servers_and_without_credentials():
    assert tracking._run_url("sqlite:////x/mlflow.db", "1", "abc") is None
    url = tracking._run_url("https://bot:s3cret@mlflow.example.org:8443/", "7", "abc")
    assert url == "https://mlflow.example.org:8443/#/experiments/7/runs/abc"


def test_git_dirty_and_dvc_hash_fallback(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    assert git_dirty(repo) is False
    (repo / "new.py").write_text("x = 1\n")
    assert git_dirty(repo) is True
    assert git_sha(tmp_path / "not-a-repo") is None and git_dirty(tmp_path / "not-a-repo") is None

    assert dvc_out_hash(repo, "data/qa") == "0123456789abcdef0123456789abcdef.dir"  # only a dep: still recorded
    assert dvc_out_hash(repo, repo / "data" / "dataset") == "3f2c1e0d9b8a7f6e5d4c3b2a19081726.dir"  # absolute path
    assert dvc_out_hash(repo, "data/model") is None  # neither recorded nor present
    model = repo / "data" / "model"
    model.mkdir(parents=True)
    (model / "a.bin").write_bytes(b"abc")
    (model / "sub").mkdir()
    (model / "sub" / "b.txt").write_text("b")
    first = dvc_out_hash(repo, "data/model")
    assert first.startswith("sha256:") and first == content_hash(model)
    (model / "sub" / "b.txt").write_text("c")
    assert dvc_out_hash(repo, "data/model") != first
    # `dvc add` leaves a <path>.dvc file
    (repo / "data" / "raw").mkdir()
    (repo / "data" / "raw" / "pdfs.dvc").write_text("outs:\n- md5: aaaabbbbccccddddeeeeffff00001111.dir\n  path: pdfs\n  hash: md5\n")
    assert dvc_out_hash(repo, "data/raw/pdfs") == "aaaabbbbccccddddeeeeffff00001111.dir"


def test_disabled_run_touches_no_store(monkeypatch, tmp_path):
    db = tmp_path / "never.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with start_run({"train": {"lr": 1}}, {"a": "b"}, experiment="rank1", run_name="r", enabled=False) as run:
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_params({"x": 1})
        run.log_dict({"a": 1}, "a.json")
        run.log_text("t", "t.txt")
        run.log_table([{"a": 1}], "t.json")
        run.log_artifact(tmp_path / "f.txt")
        run.set_tags({"x": "y"})
    assert run.run_id is None and run.url is None and not run.enabled
    assert mlflow.active_run() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no db, no mlruns, no ./mlflow.db


def test_raising_block_ends_run_failed(mlflow_uri):
    with pytest.raises(RuntimeError, match="out of memory"):
        with start_run({"train": {"lr": 1}}, {}, experiment="glassllava-test", run_name="boom") as run:
            run.log_metrics({"loss": 2.0}, step=0)
            raise RuntimeError("CUDA out of memory")
    assert MlflowClient(mlflow_uri).get_run(run.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_resume_run_after_a_kill(mlflow_uri):
    with pytest.raises(KeyboardInterrupt):
        with start_run({"train": {"lr": 1}}, {}, experiment="glassllava-test") as first:
            first.log_metrics({"loss": 2.0}, step=1)
            raise KeyboardInterrupt
    client = MlflowClient(mlflow_uri)
    assert client.get_run(first.run_id).info.status == "KILLED"
    with start_run({"train": {"lr": 2, "epochs": 3}}, {}, experiment="glassllava-test", run_id=first.run_id) as again:
        again.log_metrics({"loss": 1.0}, step=2)
    got = client.get_run(first.run_id)
    assert again.run_id == first.run_id and got.info.status == "FINISHED"
    assert got.data.params == {"train.lr": "1", "train.epochs": "3"}  # a param never changes; new keys are added
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [1, 2]
    with start_run({}, {}, experiment="glassllava-test", run_id="0" * 32) as other:  # unknown to this store
        pass
    assert other.run_id != "0" * 32


# --- registry --------------------------------------------------------------------------------------------------


def test_register_twice_moves_alias_and_files_come_back(mlflow_uri, tmp_path):
    model_dir = _fake_model(tmp_path / "model")
    assert get_alias_version("glassllava", "candidate") is None  # no registered model yet
    with start_run({"train": {"lr": 1}}, {"git_sha": "abc123"}, experiment="glassllava-test") as run:
        pass
    assert register_model(run.run_id, model_dir) == 1
    assert get_alias_version("glassllava", "champion") is None  # model exists, alias does not
    assert register_model(run.run_id, model_dir) == 2

    mv = get_alias_version("glassllava", "candidate")
    assert int(mv.version) == 2 and mv.run_id == run.run_id and mv.source.startswith("models:/m-")
    assert mv.tags[tracking.FORMAT_TAG] == "mlflow-pyfunc" and mv.tags["git_sha"] == "abc123"
    client = MlflowClient(mlflow_uri)
    assert client.get_registered_model("glassllava").aliases == {"candidate": 2}
    # the LoggedModel belongs to the run's experiment and is linked to the run
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.experiment_id == run.experiment_id and logged.source_run_id == run.run_id
    assert logged.artifact_location.startswith((tmp_path / "mlflow" / "mlruns" / "glassllava-test").as_uri())

    back = download_model("glassllava", "candidate", dst=tmp_path / "back")
    assert _files(back) == _files(model_dir)
    pyfunc_dir = back.parents[1]
    assert back == pyfunc_dir / "artifacts" / "model"
    assert (pyfunc_dir / "MLmodel").is_file() and not list(pyfunc_dir.rglob("*.pkl"))  # models-from-code, no pickle

    # big models: register the folder in place
    assert register_model(run.run_id, model_dir, alias="champion", copy_artifacts=False) == 3
    champ = get_alias_version("glassllava", "champion")
    assert champ.source == model_dir.resolve().as_uri() and champ.tags[tracking.FORMAT_TAG] == "hf-folder"
    assert _files(download_model("glassllava", "champion", dst=tmp_path / "back3")) == _files(model_dir)
    assert int(get_alias_version("glassllava", "candidate").version) == 2


# --- secrets -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("qa.llm.api_key", True),
        ("OPENAI_API_KEY", True),
        ("hf_token", True),
        ("HF_TOKEN", True),
        ("client_secret", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("password", True),
        ("db.password", True),
        ("apikey", True),
        ("qa.llm.api_key_env", False),
        ("train.max_new_tokens", False),
        ("qa.llm.max_tokens", False),
        ("model.tokenizer", False),
        ("train.lr", False),
        ("qa.split_salt", False),
    ],
)
def test_is_secret_key(key, secret):
    assert is_secret_key(key) is secret


def test_secrets_never_reach_the_store_or_artifacts(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    monkeypatch.setenv("SERVICE_PASSWORD", "plain-hunter2-value")
    params = {
        "qa": {"llm": {"api_key": "sk-test-123", "api_key_env": "OPENAI_API_KEY", "max_tokens": 4000}},
        "note": "called with plain-hunter2-value",
        "hf_token": "hf_abcdefghijklmnopqrstuvwxyz",
    }
    with start_run(params, {"comment": "key sk-test-123", "password": "plain-hunter2-value"}, experiment="glassllava-test") as run:
        run.log_dict({"api_key": "sk-test-123", "nested": [{"text": "sk-test-123 leaked"}]}, "config.json")
        run.log_text(f"env: {os.environ['OPENAI_API_KEY']}", "env.txt")
        run.log_table([{"question": "q", "answer": "plain-hunter2-value"}], "table.json")
        run.set_tags({"extra": "sk-test-123"})
    register_model(run.run_id, _fake_model(tmp_path / "model"))

    got = MlflowClient(mlflow_uri).get_run(run.run_id).data
    assert got.params["qa.llm.api_key"] == tracking.REDACTED and got.params["hf_token"] == tracking.REDACTED
    assert got.params["qa.llm.api_key_env"] == "OPENAI_API_KEY" and got.params["qa.llm.max_tokens"] == "4000"
    leaks = [
        str(p)
        for p in tmp_path.rglob("*")
        if p.is_file() and any(s in p.read_bytes() for s in (b"sk-test-123", b"plain-hunter2-value", b"hf_abcdefghijklmnop"))
    ]
    assert leaks == []
    assert (tmp_path / "mlflow" / "mlflow.db").stat().st_size > 0


# --- the pyfunc wrapper with a real (tiny) LLaVA -----------------------------------------------------------------------


def _tiny_llava(folder: Path) -> None:
    """notes/training.md §6: a 28 px CLIP tower, a 2-layer Llama, a tokenizer trained here; saved in HF layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = ["USER: what defects are visible? ASSISTANT: a crack in the glass", "bubbles, pores and a scale bar"]
    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=4,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("GLASSLLAVA_SLOW_TESTS"),
    reason="imports transformers' LLaVA (~20-30 s on a 2-core CPU without cached bytecode); set GLASSLLAVA_SLOW_TESTS=1",
)
def test_pyfunc_model_answers_questions(mlflow_uri, tmp_path):
    pytest.importorskip("transformers")
    import pandas as pd
    from PIL import Image

    _tiny_llava(tmp_path / "model")
    with start_run({}, {}, experiment="glassllava-test") as run:
        pass
    register_model(run.run_id, tmp_path / "model")
    Image.new("RGB", (40, 30), (120, 130, 140)).save(tmp_path / "sem.png")

    model = mlflow.pyfunc.load_model("models:/glassllava@candidate")
    answers = model.predict(
        pd.DataFrame({"image": [str(tmp_path / "sem.png")], "question": ["What defects are visible?"]}), params={"max_new_tokens": 3}
    )
    assert len(answers) == 1 and isinstance(answers[0], str)
