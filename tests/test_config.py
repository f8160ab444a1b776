"""params.yaml, schemas, the CLI surface and the DVC pipeline agree with each other."""

from __future__ import annotations

import importlib
import inspect

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from glassllava.cli import app
from glassllava.params import Params, ParamsError, load_params
from glassllava.schemas import FIGURES_SCHEMA, PAPERS_SCHEMA, SchemaMismatch, conform, table_from_rows

from .conftest import REPO


def test_shipped_params_yaml_equals_the_embedded_default():
    assert load_params(REPO / "params.yaml") == Params()


def test_unknown_keys_and_bad_values_are_rejected(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("figures:\n  dpi: 150\n  dpii: 3\n")
    with pytest.raises(ParamsError, match="dpii"):
        load_params(bad)
    bad.write_text("figures:\n  layout_backend: magic\n")
    with pytest.raises(ParamsError):
        load_params(bad)
    bad.write_text("corpus:\n  sources: []\n")
    with pytest.raises(ParamsError):
        load_params(bad)


def test_schema_mismatch_names_the_columns():
    with pytest.raises(SchemaMismatch, match=r"missing columns \['doi'"):
        conform(pa.table({"paper_sha": ["x"]}), PAPERS_SCHEMA)
    assert table_from_rows([], FIGURES_SCHEMA).schema == FIGURES_SCHEMA


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for name in ["synth", "corpus", "ingest", "figures", "status"]:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output
    for name in ["figures", "sem"]:
        result = runner.invoke(app, ["bench", name, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_every_dvc_stage_is_a_flow_module_with_its_params_section():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    sections = set(Params.model_fields)
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m flows.{name}"
        module = importlib.import_module(f"flows.{name}")
        assert hasattr(module, f"{name}_flow")
        for p in stage.get("params", []):
            assert p.split(".")[0] in sections
        if name != "train":  # a trained model replaces the last one whole; every other stage keeps per-item caches
            assert all(next(iter(o.values())).get("persist") for o in stage["outs"])


def test_figures_stage_fails_clearly_before_ingest(tmp_path):
    result = CliRunner().invoke(app, ["figures", "--data", str(tmp_path / "data"), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1
    assert "run the ingest stage first" in result.output


def test_prefect_yaml_is_valid_and_schedules_the_nightly_flow():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text()))
    raw = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    nightly = next(d for d in model.deployments if d.name == "nightly")
    assert nightly.entrypoint == "flows/nightly.py:nightly"
    module = importlib.import_module("flows.nightly")
    assert module.nightly.name == "nightly"
    schedule = raw["nightly"]["schedules"][0]
    assert schedule["cron"] and schedule["timezone"] == "Europe/Berlin"
    assert raw["nightly"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert raw["nightly"]["work_pool"]["name"] == "cpu-pool"
    # the GPU pool's deployment: the flow the nightly starts, with the GPU count, tracking URI and image as job variables
    train = raw["train"]
    assert train["entrypoint"] == "flows/train_remote.py:train_remote" and train["work_pool"]["name"] == "a100-pool"
    assert importlib.import_module("flows.train_remote").train_remote.name == "train-remote"
    # <flow name>/<deployment name>, as prefect.yaml registers it
    assert inspect.signature(module.nightly.fn).parameters["train_deployment"].default == "train-remote/train"
    assert raw["nightly"]["parameters"]["train_deployment"] == "train-remote/train"
    variables = train["work_pool"]["job_variables"]
    assert variables["env"]["PET_NPROC_PER_NODE"] == "gpu" and "MLFLOW_TRACKING_URI" in variables["env"] and "image" in variables


# --- a mistyped params.yaml: one line per problem (file, dotted key, value, what is expected), exit 2 ---
def _problems(tmp_path, text: str) -> list[str]:
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(bad)
    assert str(info.value) == "\n".join(info.value.lines)
    return [line.replace(str(bad), "params.yaml") for line in info.value.lines]


def test_params_error_unknown_key_suggests_the_near_name(tmp_path):
    assert _problems(tmp_path, "figures:\n  dppi: 150\n") == ["params.yaml: figures.dppi: unknown key (did you mean dpi?)"]
    assert _problems(tmp_path, "figure:\n  dpi: 150\n") == ["params.yaml: figure: unknown key (did you mean figures?)"]
    (line,) = _problems(tmp_path, "figures:\n  zzz: 1\n")  # nothing near: the keys the section has
    assert line.startswith("params.yaml: figures.zzz: unknown key (expected one of: layout_backend, ") and "dpi" in line


def test_params_error_wrong_type_names_key_value_and_expectation(tmp_path):
    assert _problems(tmp_path, "figures:\n  dpi: high\n") == ["params.yaml: figures.dpi = 'high': expected an integer"]
    assert _problems(tmp_path, "figures:\n  split_panels: maybe\n") == [
        "params.yaml: figures.split_panels = 'maybe': expected true or false"]
    assert _problems(tmp_path, "figures:\n  layout_backend: magic\n") == [
        "params.yaml: figures.layout_backend = 'magic': expected 'heuristic', 'layoutparser' or 'heuristic+rapid'"]
    assert _problems(tmp_path, "figures:\n  dpi: 5000\n") == ["params.yaml: figures.dpi = 5000: expected a value of at most 600"]
    assert _problems(tmp_path, "corpus:\n  sources: []\n") == ["params.yaml: corpus.sources = []: expected at least one source"]
    assert _problems(tmp_path, "figures: 3\n") == ["params.yaml: figures = 3: expected a section (a mapping of keys)"]
    assert _problems(tmp_path, "- figures\n") == [
        "params.yaml: expected a mapping of sections (corpus, ingest, figures, qa, dataset, model, train, tracking, evaluate), got ['figures']"]


def test_params_error_nested_key_is_dotted(tmp_path):
    assert _problems(tmp_path, "qa:\n  llm:\n    temperature: warm\n") == ["params.yaml: qa.llm.temperature = 'warm': expected a number"]
    assert _problems(tmp_path, "corpus:\n  generated:\n    sed: 1\n") == [
        "params.yaml: corpus.generated.sed: unknown key (did you mean seed?)"]
    assert _problems(tmp_path, "corpus:\n  sources: [generated, ftp]\n") == [
        "params.yaml: corpus.sources[1] = 'ftp': expected 'generated', 'inbox' or 'urls'"]


def test_params_error_lists_every_problem_in_file_order(tmp_path):
    text = "figures:\n  dppi: 150\n  dpi: high\ntrain:\n  lr: 0\nqa:\n  llm:\n    seed: x\n"
    assert _problems(tmp_path, text) == [
        "params.yaml: figures.dppi: unknown key (did you mean dpi?)",
        "params.yaml: figures.dpi = 'high': expected an integer",
        "params.yaml: train.lr = 0: expected a value greater than 0",
        "params.yaml: qa.llm.seed = 'x': expected an integer",
    ]


def test_params_error_invalid_yaml_is_one_line_with_line_and_column(tmp_path):
    (line,) = _problems(tmp_path, "figures:\n  dpi: 150\n dppi: 3\n")
    assert line.startswith("params.yaml:3:2: invalid YAML: ")
    (line,) = _problems(tmp_path, "figures: dpi: 150\n")
    assert line == "params.yaml:1:13: invalid YAML: mapping values are not allowed here"


def test_empty_params_file_is_the_embedded_default(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("# nothing set\n")
    assert load_params(empty) == Params()


def test_cli_reports_bad_params_one_line_each_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("figures:\n  dpi: high\n  dppi: 150\n")
    result = CliRunner().invoke(app, ["figures", "--params", str(bad), "--data", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{bad}: figures.dpi = 'high': expected an integer",
                                          f"{bad}: figures.dppi: unknown key (did you mean dpi?)"]


def test_stage_entry_point_reports_bad_params_and_exits_2_without_traceback(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("figures:\n  dpi: high\n  dppi: 150\ncorpus:\n  generated:\n    papers: 0\n")
    # An API nobody listens on: were a flow to run, it would fail fast rather than start a Prefect server.
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run([sys.executable, "-m", "flows.figures", "--params", str(bad), "--data", str(tmp_path / "data")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines() == [
        f"{bad}: figures.dpi = 'high': expected an integer",
        f"{bad}: figures.dppi: unknown key (did you mean dpi?)",
        f"{bad}: corpus.generated.papers = 0: expected a value of at least 1",
    ]
