"""experiments/mini: its experiment configs compose for every point of the driver's grid, and the renderer
turns synthetic results.json files into docs-style tables (missing cells marked) and figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kasa.config import CONF_DIR
from kasa.methods import method_from_config
from kasa.runs.hashing import config_hash

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mini_render", REPO / "experiments" / "mini" / "render.py")
render_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_mod)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("task", render_mod.TASKS)
def test_mini_configs_compose(task):
    seen = set()
    for method in render_mod.METHODS:
        cfg = _compose("experiment=mini", f"dataset={task}", f"method={method}", "seed=1")
        c = OmegaConf.to_container(cfg, resolve=True)
        method_from_config(cfg.method)
        assert c["model"]["name"] == "minilm" and c["study"]["table"] == "mini"
        assert c["benchmark"]["optim"]["lr"] == (1e-4 if method == "fft" else 1e-3)
        assert c["trainer"]["max_epochs"] == 3 and c["benchmark"]["selection"] == "best"
        assert c["dataset"]["source_args"]["split_seed"] == 0  # fixed validation split for every seed
        seen.add(config_hash(cfg))
    abl = {}
    for stage in render_mod.STAGES:
        cfg = _compose("experiment=mini_ablation", f"dataset={task}", f"study.stage={stage}")
        c = OmegaConf.to_container(cfg, resolve=True)
        method_from_config(cfg.method)
        abl[stage] = (c["method"]["singular_values"], c["method"]["beta"], c["method"]["gamma"])
        assert c["study"]["table"] == "mini_ablation" and c["method"]["name"] == "kasa"
        # same training settings as the main table
        assert c["benchmark"]["optim"]["lr"] == 1e-3 and c["dataset"]["max_length"] == cfg.dataset.max_length
        seen.add(config_hash(cfg))
    assert abl == {"lora": ("off", 0.0, 0.0), "learnable_sv": ("learnable", 0.0, 0.0),
                   "l2": ("learnable", 1e-4, 0.0), "l3": ("learnable", 1e-4, 1e-3)}
    # the l3 stage is the mini kasa run: same method settings
    kasa = OmegaConf.to_container(_compose("experiment=mini", f"dataset={task}"), resolve=True)["method"]
    l3 = OmegaConf.to_container(_compose("experiment=mini_ablation", f"dataset={task}"), resolve=True)["method"]
    assert kasa == l3
    assert len(seen) == len(render_mod.METHODS) + len(render_mod.STAGES)  # every point has its own run dir


def test_driver_grid_matches_renderer():
    sh = (REPO / "experiments" / "mini" / "run.sh").read_text()
    assert "method=" + ",".join(render_mod.METHODS) in sh
    assert "study.stage=" + ",".join(render_mod.STAGES[:-1]) in sh
    assert "sweep_dir=" in sh and " ".join(render_mod.TASKS) in sh


def _result(path: Path, table: str, method: str, task: str, seed: int, acc: float, stage: str | None = None):
    cfg = {"study": {"table": table, **({"stage": stage} if stage else {})}, "model": {"name": "minilm"},
           "dataset": {"name": task, "monitor": "accuracy"}, "seed": seed,
           "method": {"name": method, "singular_values": "off" if stage == "lora" else "learnable"}}
    res = {"config": cfg, "method": method, "dataset": task, "seed": seed, "wall_time_s": 10.0,
           "metrics": {"reported": {"accuracy": acc}, "selection": "best", "monitor": "accuracy"}}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(res))


def test_render_synthetic_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for i, m in enumerate(render_mod.METHODS):
        for t in render_mod.TASKS:
            for s in render_mod.SEEDS:
                if (m, t, s) == ("fft", render_mod.TASKS[1], 2):
                    continue  # one missing run
                _result(sweep / f"{m}-{t}-s{s}", "mini", m, t, s, 0.6 + 0.01 * i + 0.02 * s)
    for st in ("lora", "learnable_sv"):  # l2 missing entirely
        for t in render_mod.TASKS:
            for s in render_mod.SEEDS:
                _result(sweep / f"abl-{st}-{t}-s{s}", "mini_ablation", "kasa", t, s, 0.5, stage=st)
    (sweep / "wall_time_s.txt").write_text("1234\n")
    out, figs = tmp_path / "docs" / "mini.md", tmp_path / "docs" / "figures"
    md = render_mod.render(sweep, out, figs, date="2026-11-26")
    assert out.read_text() == md
    assert (figs / "mini_methods.png").stat().st_size > 1000 and (figs / "mini_ablation.png").stat().st_size > 1000
    lines = md.splitlines()
    kasa = next(ln for ln in lines if ln.startswith("| kasa |"))
    assert "62.0 (62.0 ± 2.0, n=3)" in kasa  # median of 60, 62, 64
    fft = next(ln for ln in lines if ln.startswith("| fft |"))
    assert "n=2" in fft
    l2 = next(ln for ln in lines if ln.startswith("| kasa (stage=l2) |"))
    assert l2.count(render_mod.MISSING) == 3  # two tasks + average
    l3 = next(ln for ln in lines if ln.startswith("| kasa (stage=l3) |"))
    assert "62.0" in l3  # read from the mini kasa runs
    assert "Incomplete: 7 of 54 runs missing" in md and "1234 s" in md and "2026-11-26" in md
    assert "best validation epoch" in md


# -- the powered reproduction (conf/experiment/mini_powered.yaml, experiments/mini/powered.sh) ------------------
POWERED_ARMS = [("kasa", "paper"), ("kasa", "none"), ("kasa", "activation_aware"), ("lora", None)]


@pytest.mark.parametrize("method,truncation", POWERED_ARMS)
def test_powered_arms_compose_and_pool_across_seeds(method, truncation):
    from kasa.analysis.report import pooling_hash

    extra = [f"method.truncation={truncation}"] if truncation else []
    groups = set()
    for seed in (0, 7):
        cfg = _compose("experiment=mini_powered", f"method={method}", f"seed={seed}", *extra)
        c = OmegaConf.to_container(cfg, resolve=True)
        method_from_config(cfg.method)
        assert c["trainer"]["max_epochs"] == 3 and c["benchmark"]["selection"] == "last"
        assert c["dataset"]["name"] == "vader_movie5" and c["dataset"]["split_per_seed"] is True
        assert len(c["study"]["seeds"]) >= 15
        groups.add(pooling_hash(c))
    assert len(groups) == 1  # the seeds of one arm pool into one cell although their splits differ


def test_split_per_seed_draws_the_split_from_the_run_seed():
    from kasa.tasks.classification.data import load_splits
    from kasa.tasks.classification.task import split_args

    def val_texts(*overrides):
        cfg = _compose("experiment=mini_powered", *overrides)
        args = split_args(cfg)
        return args["split_seed"], sorted(e.text for e in load_splits(cfg.dataset.source, **args).validation)

    s0, v0 = val_texts("seed=0")
    s3, v3 = val_texts("seed=3")
    assert (s0, s3) == (0, 3) and v0 != v3 and len(v0) == len(v3)
    assert val_texts("seed=3") == (s3, v3)  # a pure function of the seed
    fixed_seed, fixed = val_texts("seed=3", "dataset.split_per_seed=false")
    assert fixed_seed == 0 and fixed == v0  # the switch off: the fixed split of every other experiment


def test_powered_driver_runs_every_arm_per_seed():
    import re

    text = (REPO / "experiments" / "mini" / "powered.sh").read_text()
    truncations = {t for group in re.findall(r"method=kasa method\.truncation=([\w,]+)", text)
                   for t in group.split(",")}
    assert truncations == {t for m, t in POWERED_ARMS if m == "kasa"} and "method=lora" in text
    assert "--plots" in text and "kasa-report" in text


def test_split_per_seed_refuses_a_source_with_fixed_splits(monkeypatch):
    from kasa.errors import DatasetError
    from kasa.tasks.classification.data import SOURCES
    from kasa.tasks.classification.task import split_args

    monkeypatch.setitem(SOURCES, "fixed", lambda task, val_fraction=0.2: None)
    cfg = _compose("experiment=mini_powered", "seed=2")
    cfg.dataset.source = "fixed"
    with pytest.raises(DatasetError, match="source 'fixed' has fixed splits.*split_per_seed=false"):
        split_args(cfg)
