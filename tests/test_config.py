"""params.yaml, schemas, the CLI surface and the DVC pipeline agree with each other."""

from __future__ import annotations

import importlib

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
    nightly = next(d for d in model.deployments if d.name == "nightly")
    assert nightly.entrypoint == "flows/nightly.py:nightly"
    module = importlib.import_module("flows.nightly")
    assert module.nightly.name == "nightly"
