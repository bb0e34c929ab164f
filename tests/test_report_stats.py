"""kasa-report's statistics on a fixture of runs with saved dev-set predictions: per-seed values, t intervals,
paired differences (bootstrap, paired t, Wilcoxon), McNemar on pooled predictions, and the stated n and MDE."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from kasa.analysis import stats
from kasa.analysis.report import build_tables, collect, load_paper_numbers, report
from kasa.cli.report import main

N_DEV = 40
SEEDS = [0, 1, 2, 3, 4]
# number of dev examples each method gets right per seed (accuracy = k / 40)
RIGHT = {"kasa": [37, 36, 38, 35, 37], "lora": [35, 36, 34, 35, 33]}


def _labels(seed: int) -> list[int]:
    return [(i + seed) % 2 for i in range(N_DEV)]


def write_run(root: Path, method: str, seed: int, right: int, *, epoch: int = 2, labels=None, task="glue_mrpc",
              predictions: bool = True, extra: dict | None = None) -> Path:
    """A finished classification run: results.json (best epoch ``epoch``) and its predictions at that epoch.
    kasa gets the FIRST ``right`` examples right, lora the LAST ``right``: the discordant counts follow."""
    labels = labels if labels is not None else _labels(seed)
    ok = set(range(right)) if method == "kasa" else set(range(N_DEV - right, N_DEV))
    acc = right / N_DEV
    cfg = {"method": {"name": method, "r": 8}, "model": {"name": "roberta-base"}, "seed": seed,
           "dataset": {"name": task, "monitor": "accuracy"}, "benchmark": {"name": "glue", "selection": "best"},
           **(extra or {})}
    history = [{"epoch": e, "step": 10 * (e + 1), "accuracy": acc - 0.05 * (epoch - e) if e != epoch else acc}
               for e in range(epoch + 1)]
    res = {"method": method, "model": "roberta-base", "dataset": task, "seed": seed, "config": cfg,
           "metrics": {"monitor": "accuracy", "selection": "best", "best": {"accuracy": acc},
                       "final": {"accuracy": acc}, "reported": {"accuracy": acc}, "best_epoch": epoch},
           "history": history, "params": {"adapter": 1000 if method == "kasa" else 900, "trainable": 5000},
           "wall_time_s": 10.0 + seed}
    d = root / f"{method}-{task}-s{seed}"
    (d / "predictions").mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(res))
    if predictions:
        rows = [{"set": "", "idx": i, "pred": y if i in ok else 1 - y, "label": y} for i, y in enumerate(labels)]
        (d / "predictions" / f"epoch{epoch}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture
def runs(tmp_path) -> Path:
    for m, ks in RIGHT.items():
        for s, k in zip(SEEDS, ks):
            write_run(tmp_path / "runs", m, s, k, epoch=1 + s % 2)
    return tmp_path / "runs"


def _acc(m: str) -> list[float]:
    return [100 * k / N_DEV for k in RIGHT[m]]


def _discordant() -> tuple[int, int]:
    """kasa right on [0, a), lora on [40 - b, 40): only-kasa = examples < a and < 40 - b ..."""
    b = c = 0
    for ka, kb in zip(RIGHT["kasa"], RIGHT["lora"]):
        a_ok, b_ok = set(range(ka)), set(range(N_DEV - kb, N_DEV))
        b += len(a_ok - b_ok)
        c += len(b_ok - a_ok)
    return b, c


def test_cells_hold_per_seed_values_t_interval_and_mde_against_the_paper(runs):
    tb = {t.key: t for t in build_tables(collect([runs], load_paper_numbers())[0])}["glue_roberta_base"]
    c = tb.cells[("kasa", "glue_mrpc")]
    vals = _acc("kasa")
    assert c.n == 5 and c.values == pytest.approx(dict(zip(SEEDS, vals)))
    assert c.ci == pytest.approx(sps.t.interval(0.95, 4, loc=statistics.fmean(vals), scale=sps.sem(vals)))
    # the paper's MRPC number is one run (seed 0 of the reference logs): unpaired, n = 5 against m = 1
    assert c.paper == 90.7 and c.mde_paper == pytest.approx(stats.mde_unpaired(statistics.stdev(vals), 5, 1))
    se = statistics.stdev(vals) * math.sqrt(1 / 5 + 1)
    assert c.mde_paper == pytest.approx((sps.t.ppf(0.975, 4) + sps.t.ppf(0.8, 4)) * se, rel=0.08)


def test_paired_differences_against_the_baseline_with_mcnemar_on_pooled_predictions(runs):
    tables = build_tables(collect([runs], load_paper_numbers())[0], baseline="lora")
    tb = {t.key: t for t in tables}["glue_roberta_base"]
    assert tb.baseline == "lora" and len(tb.paired) == 1
    p = tb.paired[0]
    d = np.array(_acc("kasa")) - np.array(_acc("lora"))
    assert (p.row, p.baseline, p.task, p.stats.n) == ("kasa", "lora", "glue_mrpc", 5)
    assert p.stats.diffs == pytest.approx(d) and p.stats.mean == pytest.approx(d.mean())
    assert p.stats.t_ci == pytest.approx(sps.t.interval(0.95, 4, loc=d.mean(), scale=sps.sem(d)))
    assert p.stats.t_p == pytest.approx(sps.ttest_rel(_acc("kasa"), _acc("lora")).pvalue)
    assert p.stats.wilcoxon_p == pytest.approx(sps.wilcoxon(d).pvalue)
    assert p.stats.bootstrap_ci == stats.bootstrap_ci(d)
    lo, hi = p.stats.bootstrap_ci
    assert d.min() <= lo <= d.mean() <= hi <= d.max()
    b, c = _discordant()
    assert (p.mcnemar.b, p.mcnemar.c, p.mcnemar.n, p.mcnemar_seeds) == (b, c, 5 * N_DEV, 5)
    want = sps.binomtest(b, b + c).pvalue if b + c < 25 else sps.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1)
    assert p.mcnemar.p == pytest.approx(want)


def test_rendered_tables_state_n_intervals_p_values_and_mde(runs, tmp_path):
    texts = report([runs], tmp_path / "out")
    assert {f.name for f in (tmp_path / "out").iterdir()} == {"report.md", "report.tex", "report.csv",
                                                             "report_paired.csv"}
    md = texts["md"]
    tb = {t.key: t for t in build_tables(collect([runs], load_paper_numbers())[0])}["glue_roberta_base"]
    c, p = tb.cells[("kasa", "glue_mrpc")], tb.paired[0]
    assert "n = 1-5 seed(s) per cell" in md or "n = 5 seed(s) per cell" in md
    assert f"/ paper 90.7 ({c.median - 90.7:+.1f}, MDE {c.mde_paper:.1f})" in md
    assert ("| kasa | MRPC | 5 | s0:92.5 s1:90.0 s2:95.0 s3:87.5 s4:92.5 | 91.5 | "
            f"[{c.ci[0]:.1f}, {c.ci[1]:.1f}] |") in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| kasa − lora | MRPC | 5 |"))
    assert f"| {p.stats.mean:+.1f} | [{p.stats.t_ci[0]:+.1f}, {p.stats.t_ci[1]:+.1f}] |" in line
    assert f"| {p.stats.t_p:.3f} | {p.stats.wilcoxon_p:.3f} | {p.stats.mde:.1f} |" in line
    assert f"b={p.mcnemar.b} c={p.mcnemar.c}" in line and "5 seed(s)" in line
    assert "percentile bootstrap (10,000 resamples" in md and "paired t interval" in md
    assert "cannot reach p < 0.05" in md  # 5 pairs
    rows = list(csv.DictReader(io.StringIO(texts["paired.csv"])))
    assert len(rows) == 1 and rows[0]["n"] == "5" and float(rows[0]["t_p"]) == pytest.approx(p.stats.t_p)
    assert float(rows[0]["mcnemar_p"]) == pytest.approx(p.mcnemar.p) and rows[0]["seeds"] == "0;1;2;3;4"
    cells = list(csv.DictReader(io.StringIO(texts["csv"])))
    kasa = next(r for r in cells if r["row"] == "kasa" and r["task"] == "glue_mrpc")
    assert float(kasa["ci_low"]) == pytest.approx(c.ci[0], abs=1e-4) and kasa["values"].startswith("0:92.5;1:90")
    assert r"\label{tab:glue_roberta_base_paired}" in texts["tex"]


def test_mcnemar_leaves_out_seeds_whose_dev_sets_differ_and_runs_without_predictions(tmp_path):
    write_run(tmp_path, "kasa", 0, 30)
    write_run(tmp_path, "lora", 0, 28)
    write_run(tmp_path, "kasa", 1, 30, labels=[1] * N_DEV)  # another split: labels differ from lora's
    write_run(tmp_path, "lora", 1, 28)
    p = build_tables(collect([tmp_path], load_paper_numbers())[0])[0].paired[0]
    assert p.stats.n == 2 and p.mcnemar_seeds == 1 and p.mcnemar.n == N_DEV and "seed(s) 1 left out" in p.mcnemar_note
    other = tmp_path / "nopred"
    write_run(other, "kasa", 0, 30, predictions=False)
    write_run(other, "lora", 0, 28)
    q = build_tables(collect([other], load_paper_numbers())[0])[0].paired[0]
    assert q.mcnemar is None and q.mcnemar_note == "no saved dev-set predictions"


def test_baseline_choice_and_cli_flags(runs, capsys):
    tables = build_tables(collect([runs], load_paper_numbers())[0], baseline="kasa")
    p = tables[0].paired[0]
    assert (p.row, p.baseline) == ("lora", "kasa") and p.stats.mean < 0
    assert build_tables(collect([runs], load_paper_numbers())[0], baseline=None)[0].paired == []
    assert main([str(runs), "--format", "md", "--baseline", "none"]) == 0
    assert "paired differences" not in capsys.readouterr().out
    assert main([str(runs), "--format", "md", "--bootstrap", "2000", "--bootstrap-seed", "3"]) == 0
    assert "2,000 resamples of the seeds, numpy seed 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(runs), "--bootstrap", "5"])
    assert main([str(runs), "--plots"]) == 2
    assert "--plots needs --out" in capsys.readouterr().err


def test_ablation_baseline_by_the_value_of_its_varied_knob(tmp_path):
    for stage, k in (("lora", 30), ("l3", 33)):
        for s in (0, 1):
            write_run(tmp_path / stage, "kasa", s, k + s,
                      extra={"study": {"table": "component_ablation", "stage": stage}})
    tb = build_tables(collect([tmp_path], load_paper_numbers())[0], baseline="lora")[0]
    assert tb.baseline == "kasa (stage=lora)" and tb.baseline_note == ""
    assert [(p.row, p.stats.mean) for p in tb.paired] == [("kasa (stage=l3)", pytest.approx(100 * 3 / N_DEV))]


def test_selection_reads_every_run_at_its_best_or_last_epoch(tmp_path):
    """--selection: the same runs read at their last epoch (results.json metrics.final) or their best one, the
    epoch each value came from recorded (it picks the predictions file McNemar reads)."""
    root = tmp_path / "runs"
    for s in range(3):
        d = write_run(root, "kasa", s, 30, epoch=2)
        res = json.loads((d / "results.json").read_text())
        res["metrics"]["final"] = {"accuracy": 0.5 + 0.01 * s}
        res["history"].append({"epoch": 3, "step": 40, "accuracy": 0.5 + 0.01 * s})
        (d / "results.json").write_text(json.dumps(res))
    best, _ = collect([root], selection="best")
    last, _ = collect([root], selection="last")
    as_run, _ = collect([root])
    assert sorted(r.value for r in best) == sorted(r.value for r in as_run) == [75.0] * 3
    assert sorted(r.value for r in last) == pytest.approx([50.0, 51.0, 52.0])
    assert {r.selection for r in last} == {"last"} and {r.epoch for r in last} == {3}
    assert {r.epoch for r in best} == {2}
    md = report([root], selection="last", formats=["md"])["md"]
    assert "last" in md and "51.0" in md
    with pytest.raises(Exception, match="selection='first': use best or last"):
        report([root], selection="first")
