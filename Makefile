# The two commands the README starts with: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench clean qgis-plugin

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so no CUDA build is pulled in by a dependency range
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,ray,train]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p demo-out
	$(BIN)/geoseg segment sample_tiles/town_utm_0p5m.tif "buildings" -o demo-out/buildings.gpkg --overwrite --json

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# mypy over geoseg/ and cli/ as [tool.mypy] in pyproject.toml sets it (untyped bodies checked too)
typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The QGIS plugin (Processing provider that runs geoseg), for Plugins > Install from ZIP; no venv needed.
qgis-plugin: dist/geoseg_processing.zip

dist/geoseg_processing.zip: docs/qgis/build_plugin.py $(wildcard docs/qgis/geoseg_processing/*)
	$(PY) docs/qgis/build_plugin.py --out $@

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache dist/geoseg_processing.zip
