# Quick start:  make run   (set up, make the sample data, dvc repro end to end)
#               make test  (set up, run the tests)
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

run: setup
	segpipe demo-data data/raw --if-empty
	dvc repro
	@echo "Report: reports/report.html (open it in a browser)   reports/eval/report.md   metrics: reports/metrics.json"

test: setup
	pytest

# the everyday loop: everything but tests/e2e (real git + DVC + training runs)
test-fast: setup
	pytest -m "not slow"

lint: setup
	ruff check pipeline tests bench

clean:
	rm -rf data/prepared data/cache data/review models reports/eval reports/train reports/review reports/report.html
