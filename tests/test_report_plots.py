"""kasa-report --plots on fixture runs: the builders' series, intervals and Pareto membership, the files written,
the W&B images (through a stand-in wandb module). No pixel tests."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from scipy import stats as sps

from kasa.analysis import plots
from kasa.analysis.report import build_tables, collect, load_paper_numbers, one_per_seed
from kasa.cli.report import main

# method -> (adapter params, per-seed accuracy per epoch); wall time grows with the seed
RUNS = {
    "kasa": (1000, [[0.60, 0.80, 0.90], [0.62, 0.84, 0.88], [0.58, 0.79, 0.92]]),
    "lora": (900, [[0.55, 0.75, 0.85], [0.57, 0.77, 0.86], [0.56, 0.70, 0.84]]),
    "fft": (100_000, [[0.70, 0.85, 0.88], [0.71, 0.86, 0.89], [0.69, 0.84, 0.90]]),
    "vera": (50, [[0.40, 0.50, 0.60], [0.42, 0.48, 0.62], [0.41, 0.52, 0.58]]),
}
LOSSES = [1.0, 0.8, 0.5, 0.4]  # train/loss at steps 10, 20, 30, 40 (times 1 + seed / 10)


def _write(root: Path, method: str, seed: int, wandb: bool = False) -> None:
    params, accs = RUNS[method]
    hist = [{"epoch": e, "step": 10 * (e + 1), "accuracy": a} for e, a in enumerate(accs[seed])]
    cfg = {"method": {"name": method}, "model": {"name": "minilm"}, "seed": seed,
           "dataset": {"name": "intent_recognition", "monitor": "accuracy"},
           "benchmark": {"name": "classification", "selection": "last"},
           "logger": {"csv": True,
                      "wandb": {"project": "kasa-test", "entity": None, "mode": "auto"} if wandb else None}}
    res = {"method": method, "seed": seed, "dataset": "intent_recognition", "config": cfg, "history": hist,
           "metrics": {"monitor": "accuracy", "selection": "last", "reported": {"accuracy": accs[seed][-1]},
                       "best_epoch": 2},
           "params": {"adapter": params, "trainable": params + 10}, "wall_time_s": 100.0 + 10 * seed}
    d = root / f"{method}-s{seed}"
    (d / "logs").mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(res))
    lines = ["epoch,step,train/loss,val/accuracy"]
    lines += [f"0,{10 * (i + 1)},{v * (1 + seed / 10)}," for i, v in enumerate(LOSSES)]
    lines += [f"{e},{10 * (e + 1)},,{a}" for e, a in enumerate(accs[seed])]
    (d / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def runs(tmp_path) -> Path:
    for m in RUNS:
        for s in range(3):
            _write(tmp_path / "runs", m, s)
    return tmp_path / "runs"


def _recs(root: Path):
    recs, _ = collect([root], load_paper_numbers())
    return one_per_seed(recs, notes=False)


def test_learning_curves_mean_and_t_interval_over_seeds(runs):
    panels = plots.learning_curves(_recs(runs))
    val, loss = panels
    assert (val.x_label, val.source, val.percent) == ("epoch", "results.json history", True)
    kasa = next(b for b in val.bands if b.label == "kasa")
    assert kasa.x == [0.0, 1.0, 2.0] and kasa.n == [3, 3, 3]
    last = [100 * a[2] for a in RUNS["kasa"][1]]
    assert kasa.mean[2] == pytest.approx(sum(last) / 3)
    assert (kasa.low[2], kasa.high[2]) == pytest.approx(sps.t.interval(0.95, 2, loc=sum(last) / 3, scale=sps.sem(last)))
    assert kasa.per_seed[1] == ([0.0, 1.0, 2.0], pytest.approx([62.0, 84.0, 88.0]))
    assert loss.source == "logs/metrics.csv" and loss.x_label == "optimiser step"
    lb = next(b for b in loss.bands if b.label == "lora")
    assert lb.x == [10.0, 20.0, 30.0, 40.0]
    assert lb.mean == pytest.approx([v * (1 + (0 + 0.1 + 0.2) / 3) for v in LOSSES])


def test_curves_use_the_step_when_runs_validate_several_times_an_epoch(tmp_path):
    """trainer.val_check_interval: several history rows share an epoch, so the validation curve is drawn against the
    optimiser step (by epoch, the rows of one epoch would fall on one x)."""
    _write(tmp_path, "kasa", 0)
    res = json.loads((tmp_path / "kasa-s0" / "results.json").read_text())
    res["history"] = [{"epoch": e // 2, "step": 5 * (e + 1), "accuracy": a} for e, a in enumerate([0.5, 0.6, 0.7, 0.8])]
    (tmp_path / "kasa-s0" / "results.json").write_text(json.dumps(res))
    val = plots.learning_curves(_recs(tmp_path))[0]
    assert val.x_label == "optimiser step" and val.bands[0].x == [5.0, 10.0, 15.0, 20.0]


def test_pareto_front_on_cost_and_metric(runs):
    assert plots.pareto_front([(1, 5), (2, 4), (3, 6), (1, 5)]) == [True, False, True, True]
    panels = {p.cost: p for p in plots.tradeoffs(_recs(runs))}
    params = {pt.row: pt for pt in panels["trainable parameters"].points}
    # last-epoch means (params): vera 60.0 (50), lora 85.0 (900), kasa 90.0 (1000), fft 89.0 (100k): fft is dominated
    assert params["kasa"].mean == pytest.approx(90.0) and params["fft"].mean == pytest.approx(89.0)
    assert {r for r, pt in params.items() if pt.pareto} == {"vera", "lora", "kasa"}
    assert params["kasa"].cost == 1000 and params["kasa"].n == 3
    wall = {pt.row: pt for pt in panels["wall time (s)"].points}
    assert wall["lora"].cost == pytest.approx(110.0)  # mean of 100, 110, 120
    mem = panels["memory (bytes)"]
    assert mem.points == [] and mem.note == plots.MEMORY_MISSING


def test_memory_is_used_when_a_run_recorded_it(runs):
    for f in runs.rglob("results.json"):
        res = json.loads(f.read_text())
        res["memory"] = {"counted_bytes": 1e6 * (2 if res["method"] == "fft" else 1)}
        f.write_text(json.dumps(res))
    mem = next(p for p in plots.tradeoffs(_recs(runs)) if p.cost.startswith("memory"))
    assert {pt.row: pt.cost for pt in mem.points}["fft"] == 2e6 and mem.note == ""


def test_forest_rows_are_the_paired_table(runs):
    tables = build_tables(_recs(runs), load_paper_numbers(), baseline="lora")
    (panel,) = plots.forest(tables)
    assert panel.baseline == "lora" and [r.label for r in panel.rows] == [
        "kasa (intent_recognition)", "fft (intent_recognition)", "vera (intent_recognition)"]
    paired = {p.row: p.stats for p in tables[0].paired}
    for r in panel.rows:
        s = paired[r.label.split(" ")[0]]
        assert (r.n, r.mean, r.t_ci, r.bootstrap_ci) == (3, s.mean, s.t_ci, s.bootstrap_ci)


def test_y_axes_include_zero_and_the_full_percent_range():
    assert plots.y_limits([76.0, 92.0], percent=True) == (0.0, 100.0)
    lo, hi = plots.y_limits([-20.0, 60.0], percent=True)  # MCC can be negative
    assert lo < -20.0 and hi == 100.0
    lo, hi = plots.y_limits([2.5, 3.0], percent=False)    # a loss
    assert lo == 0.0 and hi > 3.0


def test_cli_writes_png_and_pdf_per_figure(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--plots", "--format", "md"]) == 0
    names = sorted(p.name for p in (out / "plots").iterdir())
    (table,) = {t.key for t in build_tables(_recs(runs), load_paper_numbers())}
    stems = {f"{table}_intent_recognition_curves", f"{table}_intent_recognition_tradeoff", f"{table}_forest"}
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "pdf"))
    assert all((out / "plots" / n).stat().st_size > 1000 for n in names)
    assert "wrote 6 figure file(s)" in capsys.readouterr().out


def test_figures_go_to_wandb_when_the_runs_logged_there(tmp_path, monkeypatch):
    for s in range(2):
        _write(tmp_path / "runs", "kasa", s, wandb=True)
        _write(tmp_path / "runs", "lora", s, wandb=True)
    calls: dict = {"log": []}

    class Run:
        def log(self, d):
            calls["log"].append(d)

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    fake = types.SimpleNamespace(init=init, run=None, finish=lambda: None, Image=lambda p: ("image", p))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key: offline
    from kasa.analysis.report import report

    texts = report([tmp_path / "runs"], tmp_path / "out", formats=("md",), plots=True)
    assert calls["init"]["project"] == "kasa-test" and calls["init"]["mode"] == "offline"
    assert calls["init"]["dir"] == str(tmp_path / "out") and calls.get("finished")
    (logged,) = calls["log"]
    pngs = sorted(p for p in texts["plots"].splitlines() if p.endswith(".png"))
    assert sorted(v[1] for v in logged.values()) == pngs and all(k.startswith("report/") for k in logged)
    assert "`wandb sync` uploads it" in texts["wandb"]
    calls["log"].clear()
    report([tmp_path / "runs"], tmp_path / "out2", formats=("md",), plots=True, wandb_images=False)
    assert calls["log"] == []


def test_runs_without_wandb_log_no_images(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail: it must not be needed
    assert plots.log_to_wandb([tmp_path / "x.png"], [{"logger": {"wandb": None}}], tmp_path) == ""


def test_the_parameter_axis_is_logarithmic_only_across_a_decade():
    from kasa.analysis.plots import log_cost_axis

    assert log_cost_axis("trainable parameters", [73_824, 1_000_000])
    assert not log_cost_axis("trainable parameters", [73_728, 73_824])  # KaSA vs LoRA on MiniLM
    assert not log_cost_axis("wall time (s)", [10.0, 1000.0])
    assert not log_cost_axis("trainable parameters", [0, 1000])
