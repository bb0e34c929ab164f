"""kasa-report on synthetic results.json files: medians, mean ± std, paper numbers, missing cells, formats."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from pathlib import Path

import pytest

from kasa.analysis.report import build_tables, collect, load_paper_numbers, report
from kasa.cli.report import main


def _write(root: Path, name: str, *, method="kasa", model="roberta-base", dataset="glue_mrpc", seed=0,
           monitor="accuracy", value=0.9, selection="best", study=None, method_extra=None, extra=None,
           mtime=None) -> Path:
    cfg = {"method": {"name": method, "r": 8, **(method_extra or {})}, "model": {"name": model},
           "dataset": {"name": dataset, "monitor": monitor}, "benchmark": {"name": "glue", "selection": selection},
           "seed": seed, "run_name": f"{method}-{model}-{dataset}-s{seed}", **(extra or {})}
    if study:
        cfg["study"] = study
    res = {"method": method, "model": model, "dataset": dataset, "seed": seed, "config": cfg,
           "metrics": {"monitor": monitor, "selection": selection, "best": {monitor: value},
                       "final": {monitor: value - 0.01}, "reported": {monitor: value}, "best_epoch": 3}}
    d = root / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(res))
    if mtime is not None:
        os.utime(d / "results.json", (mtime, mtime))
    return d / "results.json"


@pytest.fixture
def runs(tmp_path) -> Path:
    mrpc = [0.90, 0.91, 0.88, 0.92, 0.89]
    for s, v in enumerate(mrpc):
        _write(tmp_path, f"kasa-mrpc-{s}", seed=s, value=v)
    for s, v in enumerate([0.64, 0.66, 0.65]):
        _write(tmp_path, f"kasa-cola-{s}", dataset="glue_cola", monitor="mcc", seed=s, value=v)
    _write(tmp_path, "lora-mrpc-0", method="lora", value=0.87)
    # a study table: rows tell the stages apart
    for st, v in (("lora", 0.85), ("l3", 0.90)):
        _write(tmp_path, f"abl-{st}", study={"table": "component_ablation", "stage": st}, value=v)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    return tmp_path


def test_cells_are_median_mean_std_with_paper_and_difference(runs):
    recs, _ = collect([runs], load_paper_numbers())
    tables = {t.key: t for t in build_tables(recs)}
    tb = tables["glue_roberta_base"]
    assert tb.tasks[:6] == ["glue_cola", "glue_sst2", "glue_mrpc", "glue_qnli", "glue_rte", "glue_stsb"]
    c = tb.cells[("kasa", "glue_mrpc")]
    vals = [90.0, 91.0, 88.0, 92.0, 89.0]
    assert c.n == 5 and c.median == pytest.approx(90.0) and c.mean == pytest.approx(statistics.fmean(vals))
    assert c.std == pytest.approx(statistics.stdev(vals)) and c.paper == 90.7 and c.diff == pytest.approx(-0.7)
    assert tb.cells[("kasa", "glue_cola")].median == pytest.approx(65.0)  # mcc in percent
    assert tb.cells[("kasa", "glue_sst2")].median is None and tb.cells[("kasa", "glue_sst2")].paper == 95.2
    assert tb.cells[("kasa", "avg")].median is None and tb.cells[("kasa", "avg")].paper == 86.3  # tasks missing
    assert tb.cells[("lora", "glue_mrpc")].median == pytest.approx(87.0) and tb.cells[("lora", "avg")].paper == 85.2
    assert "LoRA (Hu et al. 2021, Microsoft)" in tb.paper_only_rows
    assert tb.rows[0] == "kasa" and tb.selections == {"best"}
    abl = tables["component_ablation"]
    assert set(abl.rows) == {"kasa (stage=lora)", "kasa (stage=l3)"}


def test_formats_and_caption(runs, tmp_path):
    out = tmp_path / "out"
    texts = report([runs], out)
    assert {p.name for p in out.iterdir()} == {"report.md", "report.tex", "report.csv", "report_paired.csv"}
    md = texts["md"]
    assert "best validation epoch" in md and "median over seeds" in md
    assert "| kasa | 65.0 (65.0 ± 1.0, n=3) / paper 65.8 (-0.8, MDE 6.5)" in md  # MDE: 3 seeds vs 1 paper run
    assert "| lora | — | — | 87.0 (n=1) |" in md  # one seed: no SD
    assert "— / paper 95.2" in md  # a missing cell beside the paper's number
    assert r"\begin{tabular}" in texts["tex"] and r"\caption{" in texts["tex"]
    rows = list(csv.DictReader(io.StringIO(texts["csv"])))
    row = next(r for r in rows if r["table"] == "glue_roberta_base" and r["row"] == "kasa" and r["task"] == "glue_mrpc")
    assert float(row["median"]) == 90.0 and float(row["paper"]) == 90.7
    assert row["n"] == "5" and row["selection"] == "best"


def test_mixed_selection_is_flagged(tmp_path):
    _write(tmp_path, "a", value=0.9)
    _write(tmp_path, "b", seed=1, value=0.8, selection="last")
    md = report([tmp_path], formats=("md",))["md"]
    assert "MIXED" in md and "the last epoch" in md


def test_multi_task_run_and_per_model_table(tmp_path):
    d = tmp_path / "cs"
    d.mkdir()
    cfg = {"method": {"name": "kasa"}, "model": {"name": "llama-3-8b"}, "dataset": {"name": "commonsense170k"},
           "study": {"table": "commonsense", "per_model": True}, "seed": 0}
    (d / "results.json").write_text(json.dumps({"method": "kasa", "seed": 0, "config": cfg, "metrics": {
        "monitor": "average", "selection": "best", "reported": {"boolq": 0.7, "social_i_qa": 0.8, "average": 0.75}}}))
    tb = {t.key: t for t in build_tables(collect([tmp_path], load_paper_numbers())[0])}["commonsense_llama_3_8b"]
    assert tb.cells[("kasa", "boolq")].median == pytest.approx(70.0) and tb.cells[("kasa", "boolq")].paper == 73.6
    assert tb.cells[("kasa", "siqa")].median == pytest.approx(80.0)
    assert tb.cells[("kasa", "hellaswag")].paper is None  # KASA.md gives no HellaSwag number


def test_cli(runs, tmp_path, capsys):
    assert main([str(runs), "--format", "md,csv"]) == 0
    out = capsys.readouterr().out
    assert "### glue_roberta_base" in out and "table,row,task" in out
    with pytest.raises(SystemExit):
        main([str(runs), "--format", "pdf"])


def test_paper_numbers_are_only_kasa_md_values():
    p = load_paper_numbers()
    assert p["glue_roberta_base"]["numbers"]["kasa"]["glue_cola"] == 65.8
    assert p["glue_deberta_v3_base"]["numbers"]["kasa"]["glue_stsb"] == 91.6
    assert p["glue_roberta_large"]["averages"] == {"kasa": 89.0, "fft": 88.2}
    assert "hellaswag" not in p["commonsense_llama_2_7b"]["numbers"]["kasa"]


def test_wandb_runs_are_read_through_the_public_api(monkeypatch):
    """``kasa-report --wandb entity/project``: the logged Hydra config + the val/<monitor> history of each run."""
    import sys
    import types

    from kasa.analysis.report import collect_wandb

    def cfg(method, seed, selection="best"):
        return {"method": {"name": method, "r": 8}, "model": {"name": "roberta-base"}, "seed": seed,
                "dataset": {"name": "glue_mrpc", "monitor": "accuracy"},
                "benchmark": {"name": "glue", "selection": selection}}

    class Run:
        def __init__(self, rid, config, history):
            self.id, self.config, self._history = rid, config, history

        def scan_history(self, keys):
            return [{k: row[k] for k in keys if k in row} for row in self._history]

    runs = [Run("a", cfg("kasa", 0), [{"val/accuracy": 0.80}, {"val/accuracy": 0.90}, {"val/accuracy": 0.85}]),
            Run("b", cfg("kasa", 1, selection="last"), [{"val/accuracy": 0.95}, {"val/accuracy": 0.70}]),
            Run("c", cfg("lora", 0), [{"train/loss": 1.0}]),  # never validated: skipped
            Run("d", {"seed": 0}, [])]  # not a kasa-train run: skipped
    seen = {}

    class Api:
        def runs(self, path):
            seen["path"] = path
            return runs

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    recs = collect_wandb("me/kasa", load_paper_numbers())
    assert seen["path"] == "me/kasa"
    got = sorted((r.method, r.seed, r.value, r.selection, r.source) for r in recs)
    # best epoch for run a, last epoch for run b (its benchmark.selection), on the paper's x100 scale
    assert got == [("kasa", 0, pytest.approx(90.0), "best", "wandb:me/kasa/a"),
                   ("kasa", 1, pytest.approx(70.0), "last", "wandb:me/kasa/b")]
    assert {r.table for r in recs} == {"glue_roberta_base"} and {r.task for r in recs} == {"glue_mrpc"}


def test_runs_of_different_configs_are_separate_rows_not_one_cell(tmp_path):
    """Seed-0 runs of 1, 2 and 10 epochs are three configurations, not three seeds of one."""
    for epochs, v in ((1, 0.5), (2, 0.6), (10, 0.9)):
        _write(tmp_path, f"e{epochs}", value=v, extra={"trainer": {"max_epochs": epochs}})
    _write(tmp_path, "e10-s1", seed=1, value=0.8, extra={"trainer": {"max_epochs": 10}})
    tb = {t.key: t for t in build_tables(collect([tmp_path], load_paper_numbers())[0])}["glue_roberta_base"]
    rows = {r: tb.cells[(r, "glue_mrpc")] for r in tb.rows if tb.cells[(r, "glue_mrpc")].n}
    assert set(rows) == {"kasa (trainer.max_epochs=1)", "kasa (trainer.max_epochs=2)", "kasa (trainer.max_epochs=10)"}
    one = rows["kasa (trainer.max_epochs=1)"]
    assert one.n == 1 and one.median == pytest.approx(50.0)
    ten = rows["kasa (trainer.max_epochs=10)"]
    assert ten.n == 2 and ten.median == pytest.approx(85.0)
    # the paper's number sits beside the plain method row only, not beside a variant
    assert all(c.paper is None for c in rows.values())


def test_a_repeated_seed_counts_once_the_newest_run_is_kept(tmp_path, capsys):
    old = _write(tmp_path, "first", value=0.50, mtime=1_000_000)
    new = _write(tmp_path, "second", value=0.90, mtime=2_000_000)
    _write(tmp_path, "third", value=0.70, mtime=1_500_000)
    _write(tmp_path, "seed1", seed=1, value=0.80, mtime=1_000_000)
    recs, _ = collect([tmp_path], load_paper_numbers())
    c = {t.key: t for t in build_tables(recs)}["glue_roberta_base"].cells[("kasa", "glue_mrpc")]
    assert c.n == 2 and c.median == pytest.approx(85.0)  # seed 0 = 90 (newest), seed 1 = 80
    err = capsys.readouterr().err
    assert "seed 0 ran 3 times" in err and f"kept the newest ({new})" in err and str(old) in err


def test_a_paper_table_compares_only_runs_of_its_model(tmp_path):
    glue = {"table": "glue_roberta_base"}
    _write(tmp_path, "roberta", value=0.90, study=glue)
    _write(tmp_path, "minilm", model="minilm", value=0.50, study=glue)
    tables = {t.key: t for t in build_tables(collect([tmp_path], load_paper_numbers())[0])}
    assert tables["glue_roberta_base"].cells[("kasa", "glue_mrpc")].median == pytest.approx(90.0)
    mini = tables["glue_roberta_base_minilm"].cells[("kasa", "glue_mrpc")]
    assert mini.median == pytest.approx(50.0) and mini.paper is None and mini.diff is None


@pytest.mark.parametrize("make, message", [
    (lambda p: str(p / "nonexistent"), "no such file or folder"),
    (lambda p: str(p), "no runs found"),
])
def test_cli_fails_in_one_line_without_runs(tmp_path, capsys, make, message):
    (tmp_path / "empty-run").mkdir()
    assert main([make(tmp_path), "--format", "md"]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kasa-report: error: ") and message in lines[0]
    assert captured.out == ""
