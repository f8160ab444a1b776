"""MLflow tracking for GlassLLaVA training: one tracking URI, runs, lineage tags, the model registry.

* ``tracking_uri()``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<repository root>/mlflow.db`` (an absolute path, so DVC
  stages, torchrun ranks and workers with other working directories share one store; MLflow's own default is a
  ``mlflow.db`` in the current directory). With sqlite, experiments keep their artifacts in ``mlruns/<experiment>``
  beside the db file (MLflow's default, ``./mlruns``, is again relative to the current directory).
* ``start_run(params, tags, experiment=..., run_name=..., enabled=rank == 0)``: a context manager yielding a
  ``TrainingRun`` (metrics with steps, dicts, text, tables, files, tags). Params are flattened to dotted keys
  (``train.lr``) and cut to MLflow's length limits; the run ends FAILED when the block raises (KILLED on Ctrl-C).
  ``enabled=False`` (the other ranks) gives a run whose methods do nothing and which never opens a store;
  ``run_id=`` resumes a run (training restarted from a checkpoint).
* Lineage: ``git_sha``, ``git_dirty``, ``dvc_out_hash`` (the md5 DVC recorded for an output, else a sha256 of its
  content) and ``lineage_tags`` combining them.
* Registry: ``register_model`` logs the Hugging Face model folder as an MLflow pyfunc model (models-from-code, so no
  pickle) and creates a version of a registered model with an alias; ``get_alias_version`` answers None on a fresh
  registry; ``download_model`` fetches the Hugging Face folder of a version back.
* Secrets never reach MLflow: keys that look like secrets (``*_key``, ``token``, ``*secret*``, ``password``) are
  redacted from params, tags, dicts and tables, and the values of such environment variables are blanked wherever
  they appear in logged text.

Plain module: no Prefect. Only rank 0 should pass ``enabled=True``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

log = logging.getLogger(__name__)

REPO_ENV = "GLASSLLAVA_REPO"  # overrides the repository root found from the current directory
_ROOT_MARKERS = ("dvc.yaml", ".git")  # nearest parent holding the first, else the second
REDACTED = "[redacted]"
HF_ARTIFACT = "hf_model"  # pyfunc artifact name of the Hugging Face folder (stored as artifacts/<folder name>)
FORMAT_TAG = "glassllava.model_format"  # model version tag: "mlflow-pyfunc" (copied) or "hf-folder" (referenced)
# vicuna_v1 as in LLaVA (notes/training.md §2.2); used when the processor has no chat template
DEFAULT_PROMPT_TEMPLATE = "USER: {image}\n{question} ASSISTANT:"
# What the pyfunc model needs at load time, pinned to the versions it was logged with (when installed).
_MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pillow", "pandas", "timm", "accelerate")


# --- tracking URI --------------------------------------------------------------------------------------------------


def repo_root() -> Path:
    """``$GLASSLLAVA_REPO``, else the nearest parent of the current directory holding ``dvc.yaml`` (then ``.git``),
    else the current directory; always absolute."""
    if env := os.environ.get(REPO_ENV):
        return Path(env).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for marker in _ROOT_MARKERS:
        for folder in (cwd, *cwd.parents):
            if (folder / marker).exists():
                return folder
    return cwd


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo_root()>/mlflow.db`` with an absolute path."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            log.warning("MLFLOW_TRACKING_URI=%s is relative to the current directory (%s)", uri, Path.cwd())
        return uri
    return f"sqlite:///{(repo_root() / 'mlflow.db').as_posix()}"


def _sqlite_artifact_root(uri: str) -> Path | None:
    """``<db folder>/mlruns`` for a sqlite URI, None otherwise (a server or database decides itself)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = urllib.parse.urlparse(uri).path  # "/abs/mlflow.db" (or "mlflow.db" for a relative URI)
    return Path(db_path).resolve().parent / "mlruns"


UI_ENV = "GLASSLLAVA_MLFLOW_UI"  # an MLflow UI serving a sqlite store the flows write to directly (`make ui` sets it)


def _run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI for an http(s) tracking URI (credentials stripped), or under
    ``$GLASSLLAVA_MLFLOW_UI`` (an UI serving the same sqlite store), else None."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") and os.environ.get(UI_ENV):
        parts = urllib.parse.urlsplit(os.environ[UI_ENV])
    if parts.scheme not in ("http", "https"):
        return None
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def _client() -> MlflowClient:
    # MLflow internals (Model.log, finalize_logged_model, runs:/ and models:/ URIs) read the *global* URI, which
    # outranks $MLFLOW_TRACKING_URI once set: set it on every entry, so the URI resolved now is the one used.
    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def _experiment_id(client: MlflowClient, name: str) -> str:
    """Id of experiment ``name``, created with an explicit artifact location under a sqlite store."""
    if (exp := client.get_experiment_by_name(name)) is None:
        root = _sqlite_artifact_root(client.tracking_uri)
        location = (root / name).as_uri() if root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:  # another process created it first
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS) or (exp := client.get_experiment_by_name(name)) is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise MlflowException(f"experiment {name!r} is deleted: restore it (mlflow experiments restore) or choose another name")
    return exp.experiment_id


# --- secrets, params, tags ------------------------------------------------------------------------------------------

# Words that make a key a secret. Whole words, so counts such as max_tokens / max_new_tokens and tokenizer paths stay.
_SECRET_WORDS = {"password", "passwd", "pwd", "token", "secret", "secrets", "credential", "credentials", "apikey", "authorization"}
# Values that look like credentials whatever their key (OpenAI/Anthropic sk-, Hugging Face, GitHub, AWS access keys).
_SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16})")
_MIN_SECRET_LEN = 6  # shorter environment values are not blanked in text (they would match everywhere)


def is_secret_key(key: str) -> bool:
    """True for names like ``api_key``, ``qa.llm.api_key``, ``hf_token``, ``client_secret``, ``DB_PASSWORD``.

    Matches whole words of the last dotted part: ``*_key``/``*key`` ending, ``token``, ``*secret*``, ``password``.
    Not secret: ``api_key_env`` (the NAME of a variable), ``max_new_tokens``, ``tokenizer``.
    """
    last = re.split(r"[./]", key.lower())[-1]
    words = [w for w in re.split(r"[^a-z0-9]+", last) if w]
    if not words:
        return False
    if words[-1] == "key" or words[-1].endswith(("apikey", "secretkey", "privatekey", "accesskey")):
        return True
    return any(w in _SECRET_WORDS or "secret" in w or "password" in w or w.endswith("token") for w in words)


def _secret_env_values() -> list[str]:
    """Values of environment variables whose names look secret (OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY ...)."""
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with secret environment values and credential-looking strings replaced by ``[redacted]``."""
    for secret in _secret_env_values() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return _SECRET_VALUE.sub(REDACTED, text)


def redact(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of ``obj`` (nested dicts/lists/strings) with secret-looking keys' values and secret strings redacted."""
    secrets = _secret_env_values() if secrets is None else list(secrets)
    if isinstance(obj, Mapping):
        return {k: REDACTED if is_secret_key(str(k)) else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj, secrets)
    return obj


def _plain(obj: Any) -> Any:
    """Pydantic models (``Params``) and dataclass-likes to plain data; everything else unchanged."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; lists stay values (logged as JSON)."""
    flat: dict[str, Any] = {}
    for key, value in _plain(params).items():
        name = f"{prefix}{key}"
        value = _plain(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _key(key: str) -> str:
    """A valid MLflow param/metric/tag name: odd characters become ``_``, at most 250 characters."""
    key = re.sub(r"[^/\w.\- :]", "_", str(key)).strip("/") or "_"
    if len(key) > MAX_ENTITY_KEY_LENGTH:  # keep names distinct after cutting
        key = key[: MAX_ENTITY_KEY_LENGTH - 9] + "~" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return key


def _value(value: Any, limit: int) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str, separators=(",", ":"))
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flattened, redacted, MLflow-sized params: what ``TrainingRun.log_params`` sends."""
    secrets = _secret_env_values()
    out = {}
    for key, value in flatten_params(params).items():
        out[_key(key)] = REDACTED if is_secret_key(key) else scrub_text(_value(value, MAX_PARAM_VAL_LENGTH), secrets)
    return out


def clean_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Redacted, stringified, MLflow-sized tags (``None`` values dropped)."""
    secrets = _secret_env_values()
    return {
        _key(k): REDACTED if is_secret_key(str(k)) else scrub_text(_value(v, MAX_TAG_VAL_LENGTH), secrets)
        for k, v in (tags or {}).items()
        if v is not None
    }


# --- runs -------------------------------------------------------------------------------------------------------


class TrainingRun:
    """One MLflow run, or (``enabled=False``) a stand-in whose methods do nothing. Made by ``start_run``."""

    def __init__(self, client: MlflowClient | None = None, run_id: str | None = None, experiment_id: str | None = None):
        self._client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.url = _run_url(client.tracking_uri, experiment_id, run_id) if client and run_id and experiment_id else None

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened (``train.lr``), redacted, cut to 6000 characters. A param cannot change once logged."""
        if self.enabled and (cleaned := clean_params(params)):
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in cleaned.items()], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Numbers (floats, ints, 0-d tensors) at ``step``; values that are not numbers are skipped with a warning."""
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                log.warning("metric %s=%r is not a number: not logged", key, value)
                continue
            if math.isinf(number):
                log.warning("metric %s is infinite at step %d", key, step)
            batch.append(Metric(_key(key), number, now, int(step)))
        if batch:
            self._client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled and (cleaned := clean_tags(tags)):
            self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in cleaned.items()], synchronous=True)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """JSON (or YAML for .yaml/.yml) artifact, secrets redacted."""
        if self.enabled:
            self._client.log_dict(self.run_id, redact(_plain(obj)), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self._client.log_text(self.run_id, scrub_text(text), artifact_file)

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows of one table (``.json`` or ``.parquet``; MLflow appends to an existing ``artifact_file``)."""
        if not self.enabled or not rows:
            return
        import pandas as pd  # an mlflow dependency

        self._client.log_table(self.run_id, data=pd.DataFrame([redact(dict(r)) for r in rows]), artifact_file=artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file or a whole folder, copied as is (not scanned for secrets)."""
        if not self.enabled:
            return
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)


@contextmanager
def start_run(
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    *,
    experiment: str = "glassllava",
    run_name: str | None = None,
    enabled: bool = True,
    run_id: str | None = None,
) -> Iterator[TrainingRun]:
    """Open an MLflow run in ``experiment`` (created if missing) and make it the active run.

    Args:
        params: nested or flat (``Params.model_dump()`` works, a ``Params`` too); flattened to ``section.key``.
        tags: e.g. ``lineage_tags(repo_root())``; secrets redacted.
        enabled: False on non-zero ranks: nothing is opened, every method is a no-op, ``run_id``/``url`` are None.
        run_id: resume this run (training restarted from a checkpoint); a run unknown to the store starts a new one.

    The run ends FINISHED, FAILED when the block raises, KILLED on KeyboardInterrupt; the exception propagates.
    As in ``mlflow.start_run``, ``$MLFLOW_RUN_ID`` also resumes a run; an already active run becomes the parent
    (nested run). The run is active, so ``mlflow.log_*`` calls and HF Trainer's MLflow callback log into it.
    A resumed run keeps its params: only new keys are added (MLflow refuses to change a param), changes are warned.
    """
    if not enabled:
        yield TrainingRun()
        return
    client = _client()
    experiment_id = _experiment_id(client, experiment)
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            log.warning("run %s is not in %s: starting a new run", run_id, client.tracking_uri)
            run_id = None
    active = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=scrub_text(run_name) if run_name else None,
        tags=clean_tags(tags),
        nested=mlflow.active_run() is not None,
    )
    run = TrainingRun(client, active.info.run_id, active.info.experiment_id)
    log.info("MLflow run %s in experiment %r (%s)", run.run_id, experiment, run.url or client.tracking_uri)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        logged = client.get_run(run.run_id).data.params  # non-empty when resumed
        fresh = clean_params(params or {})
        if changed := sorted(k for k, v in fresh.items() if k in logged and logged[k] != v):
            log.warning("resumed run %s keeps its logged values of %s", run.run_id, ", ".join(changed))
        if new := {k: v for k, v in fresh.items() if k not in logged}:
            client.log_batch(run.run_id, params=[Param(k, v) for k, v in new.items()], synchronous=True)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        current = mlflow.active_run()
        if current is not None and current.info.run_id == run.run_id:
            mlflow.end_run(status)
        else:  # the block ended or replaced the active run itself
            client.set_terminated(run.run_id, status)


# --- lineage ----------------------------------------------------------------------------------------------------


def _git(repo: str | os.PathLike, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_sha(repo: str | os.PathLike) -> str | None:
    """HEAD's commit in ``repo``; None when it is not a git work tree, has no commit or git is missing."""
    out = _git(repo, "rev-parse", "--verify", "HEAD")
    return out.strip() if out else None


def git_dirty(repo: str | os.PathLike) -> bool | None:
    """True when tracked files differ from HEAD or untracked files are not ignored; None outside git."""
    out = _git(repo, "status", "--porcelain")
    return None if out is None else bool(out.strip())


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a).strip("/") == os.path.normpath(b).strip("/")


def _recorded_hash(entry: Mapping[str, Any]) -> str | None:
    algo = entry.get("hash", "md5")  # DVC 3 writes `hash: md5` and `md5: <value>` (".dir" suffix for folders)
    return entry.get(algo) or entry.get("md5") or entry.get("etag") or entry.get("checksum")


def _relative(repo: Path, out_path: str | os.PathLike) -> str:
    """``out_path`` relative to ``repo`` (absolute paths inside it are made relative), POSIX style."""
    path = Path(out_path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(repo.resolve())
        except ValueError:
            pass
    return path.as_posix()


def dvc_lock_hash(repo: str | os.PathLike, out_path: str | os.PathLike) -> str | None:
    """The hash DVC recorded for ``out_path`` (relative to ``repo``, or absolute inside it): an out in ``dvc.lock``,
    else a dep there, else ``<out_path>.dvc`` (``dvc add``). None when DVC has no record. Stages with a ``wdir``
    record paths relative to it: those are not resolved."""
    repo = Path(repo)
    out_path = _relative(repo, out_path)
    lock = repo / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
        for section in ("outs", "deps"):
            for stage in stages.values():
                for entry in (stage or {}).get(section) or []:
                    if isinstance(entry, Mapping) and _same_path(str(entry.get("path", "")), out_path):
                        if found := _recorded_hash(entry):
                            return str(found)
    dvc_file = repo / f"{os.path.normpath(out_path).rstrip('/')}.dvc"
    if dvc_file.is_file():
        for entry in (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []:
            if isinstance(entry, Mapping) and (found := _recorded_hash(entry)):
                return str(found)
    return None


def content_hash(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` over the sorted relative paths, sizes and bytes of the files under ``path`` (or of one file)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    else:
        files = [("", path)]
    for rel, file in files:
        h.update(f"{rel}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()}"


def dvc_out_hash(repo: str | os.PathLike, out_path: str | os.PathLike) -> str | None:
    """``dvc_lock_hash``, else ``content_hash`` of ``repo/out_path`` computed here, else None (path missing)."""
    if found := dvc_lock_hash(repo, out_path):
        return found
    target = Path(repo) / _relative(Path(repo), out_path)
    if target.exists():
        log.info("%s: not in dvc.lock, hashing its content", out_path)
        return content_hash(target)
    return None


def lineage_tags(repo: str | os.PathLike, outputs: Mapping[str, str] | None = None) -> dict[str, str]:
    """``git_sha``, ``git_dirty`` and one tag per DVC output, e.g. ``{"data_md5": "data/dataset"}`` (the default)."""
    outputs = {"data_md5": "data/dataset"} if outputs is None else outputs
    tags: dict[str, str] = {}
    if sha := git_sha(repo):
        tags["git_sha"] = sha
    if (dirty := git_dirty(repo)) is not None:
        tags["git_dirty"] = str(dirty).lower()
    for tag, out in outputs.items():
        if found := dvc_out_hash(repo, out):
            tags[tag] = found
    return tags


# --- model registry ------------------------------------------------------------------------------------------------

# The models-from-code file stored with every copied model version (MLflow 3.17 refuses to unpickle a PythonModel
# unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true). Self-contained: loading needs mlflow, torch, transformers, pillow.
_PYFUNC_MODEL_CODE = '''\
"""GlassLLaVA as an MLflow pyfunc model (written by glassllava.tracking.register_model).

Input: a DataFrame with columns ``image`` (a file path, a data: URL or base64 image bytes) and ``question``.
Output: one answer per row. Params: ``max_new_tokens``, ``temperature`` (0: greedy).
The Hugging Face folder is the artifact ``hf_model``; model_config ``prompt_template`` is used when the
processor has no chat template.
"""

import base64
import io
import os

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


def _open_image(value):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    text = str(value)
    if text.startswith("data:"):
        text = text.split(",", 1)[1]
    elif os.path.exists(text):
        return Image.open(text).convert("RGB")
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


class GlassLLaVAModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = context.artifacts["hf_model"]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32  # bf16 on CPU is far slower
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.template = (context.model_config or {}).get("prompt_template") or "USER: {image}\\n{question} ASSISTANT:"

    def _prompt(self, question):
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.template.format(image=getattr(self.processor, "image_token", "<image>"), question=question)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        import torch

        params = params or {}
        temperature = float(params.get("temperature") or 0.0)
        generate = {"max_new_tokens": int(params.get("max_new_tokens") or 128), "do_sample": temperature > 0}
        if temperature > 0:
            generate["temperature"] = temperature
        answers = []
        for image, question in zip(model_input["image"], model_input["question"]):
            inputs = self.processor(images=_open_image(image), text=self._prompt(str(question)), return_tensors="pt")
            inputs = inputs.to(device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                out = self.model.generate(**inputs, **generate)
            answers.append(self.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return answers


mlflow.models.set_model(GlassLLaVAModel())
'''


def _pip_requirements() -> list[str]:
    reqs = []
    for name in _MODEL_REQUIREMENTS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{name}=={version.split('+')[0]}")  # torch 2.x+cu128 -> 2.x: local versions are not on PyPI
    return reqs


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "question")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 128), ParamSpec("temperature", "double", 0.0)]),
    )


def _log_pyfunc_model(client: MlflowClient, run, model_dir: Path, name: str, prompt_template: str) -> str:
    """Log ``model_dir`` as a pyfunc LoggedModel of ``run``; returns its ``models:/m-<id>`` URI."""
    # Model.log(run_id=...) alone would put the LoggedModel in the *active* (or Default) experiment when no run is
    # active: create it in the run's experiment first, then fill it. No input example (it would run the model) and
    # explicit requirements (inferring them loads the model in a subprocess).
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id, name=name, source_run_id=run.info.run_id, params=dict(run.data.params)
    )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)  # on purpose
        code = Path(tmp) / "glassllava_model.py"
        code.write_text(_PYFUNC_MODEL_CODE, encoding="utf-8")
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run.info.run_id,
            model_id=logged.model_id,
            python_model=str(code),
            artifacts={HF_ARTIFACT: str(model_dir)},
            model_config={"prompt_template": prompt_template},
            signature=_signature(),
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="GlassLLaVA: reads SEM micrographs of glass materials")
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def register_model(
    run_id: str,
    model_dir: str | os.PathLike,
    *,
    name: str = "glassllava",
    alias: str | None = "candidate",
    copy_artifacts: bool = True,
    tags: Mapping[str, Any] | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> int:
    """Create a version of registered model ``name`` (created if missing) from a Hugging Face model folder.

    copy_artifacts=True: the folder is logged as an MLflow pyfunc model of run ``run_id`` (LoggedModel
    ``models:/m-<id>``; the folder, byte for byte, is its artifact ``hf_model`` stored as ``artifacts/<folder name>``).
    Load with ``mlflow.pyfunc.load_model("models:/glassllava@candidate").predict(DataFrame({"image": [...],
    "question": [...]}))``, or fetch the folder with ``download_model``.
    copy_artifacts=False (big models): nothing is copied, the version's source is the folder itself (a local path only
    works with a local store: a tracking server accepts remote URIs such as ``s3://...``, given as ``model_dir``);
    fetch it with ``download_model`` or read ``mv.source``.

    ``alias`` (moved if it points at an older version) is set on the new version; its tags copy the run's own tags
    (lineage: git_sha, dataset hash ...) plus ``model_dir``, ``glassllava.model_format`` and ``model_md5`` when DVC
    recorded the folder.
    Returns the new version number.
    """
    if not run_id:
        raise ValueError("register_model needs the run_id of an MLflow run (tracking disabled on this rank?)")
    client = _client()
    run = client.get_run(run_id)
    if run.info.status == "FAILED":
        log.warning("registering a model from run %s, which FAILED", run_id)
    source_uri = str(model_dir)
    remote = "://" in source_uri and not source_uri.startswith("file://")
    if copy_artifacts or not remote:
        model_dir = Path(urllib.parse.urlparse(source_uri).path if source_uri.startswith("file://") else source_uri).resolve()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            log.warning("%s has no config.json: not a Hugging Face model folder?", model_dir)
    version_tags: dict[str, Any] = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}  # lineage
    version_tags["model_dir"] = source_uri
    if isinstance(model_dir, Path):
        root = repo_root()
        if model_dir.is_relative_to(root) and (found := dvc_lock_hash(root, model_dir.relative_to(root).as_posix())):
            version_tags["model_md5"] = found
    _ensure_registered_model(client, name)
    if copy_artifacts:
        source = _log_pyfunc_model(client, run, model_dir, name, prompt_template)
        version_tags[FORMAT_TAG] = "mlflow-pyfunc"
        model_id = source.removeprefix("models:/")
    else:
        if isinstance(model_dir, Path) and client.tracking_uri.startswith(("http://", "https://")):
            raise ValueError(
                f"a tracking server rejects local model version sources ({model_dir}): register with copy_artifacts=True, "
                "or pass the folder's remote URI (e.g. s3://...) as model_dir"
            )
        source = model_dir.as_uri() if isinstance(model_dir, Path) else source_uri
        version_tags[FORMAT_TAG] = "hf-folder"
        model_id = None
    version_tags.update(tags or {})
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=clean_tags(version_tags), model_id=model_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s from run %s (%s)%s", name, mv.version, run_id, source, f" as @{alias}" if alias else "")
    return int(mv.version)


def run_url(run_id: str) -> str | None:
    """The MLflow UI page of ``run_id`` (None: no UI known for this tracking URI, or no such run)."""
    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return _run_url(client.tracking_uri, run.info.experiment_id, run_id)


def get_alias_version(name: str = "glassllava", alias: str = "champion") -> ModelVersion | None:
    """The version ``name@alias`` points at; None when the registered model or the alias does not exist yet.

    ``MlflowClient.get_model_version_by_alias`` raises in both cases (RESOURCE_DOES_NOT_EXIST for the model,
    INVALID_PARAMETER_VALUE for the alias): the registered model's alias map is read instead; other errors propagate.
    """
    client = _client()
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if alias not in (model.aliases or {}):
        return None
    return client.get_model_version(name, str(model.aliases[alias]))


def download_model(name: str = "glassllava", alias: str = "champion", dst: str | os.PathLike | None = None) -> Path:
    """Fetch version ``name@alias`` and return its Hugging Face folder (ready for ``from_pretrained``).

    Raises LookupError when the alias does not exist. A copied (pyfunc) version downloads as an MLflow model folder
    (MLmodel, code/, requirements): the Hugging Face files are its ``artifacts/<folder name>``, which is returned.
    """
    mv = get_alias_version(name, alias)
    if mv is None:
        raise LookupError(f"registered model {name!r} has no alias {alias!r}")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dst) if dst else None))
    return _hf_folder(local)


def _hf_folder(local: Path) -> Path:
    """The Hugging Face folder inside a downloaded pyfunc model (``artifacts/<folder name>``), else ``local`` itself."""
    if not (local / "MLmodel").is_file():
        return local
    flavor = (yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8")) or {}).get("flavors", {}).get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(HF_ARTIFACT)
    return local / entry["path"] if entry else local
