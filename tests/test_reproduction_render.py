"""experiments/reproduction/render.py: tables, paired comparisons and McNemar from run records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from kasa.analysis.report.collect import Record

RENDER = Path(__file__).parents[1] / "experiments" / "reproduction" / "render.py"
SPEC = importlib.util.spec_from_file_location("render", RENDER)
render = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(render)


def _rec(tmp_path: Path, method: str, seed: int, value: float, correct: list[bool]) -> Record:
    run = tmp_path / f"{method}-{seed}"
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "epoch2.jsonl").write_text(
        "".join(json.dumps({"set": "", "idx": i, "pred": int(c), "label": 1}) + "\n" for i, c in enumerate(correct)))
    return Record(table="t", method=method, variant="", task="a", seed=seed, value=value, metric="accuracy",
                  selection="last", source=str(run / "results.json"), epoch=2, params={"adapter": 10})


def test_tables_and_paired_reading(tmp_path):
    recs = [_rec(tmp_path, "kasa", s, 60.0 + s + 2, [True] * 8 + [False] * 2) for s in range(3)]
    recs += [_rec(tmp_path, "lora", s, 60.0 + s + 0.1 * s, [True] * 6 + [False] * 4) for s in range(3)]
    rows = render.table(recs, ["lora", "kasa"], ["a"], "method")
    assert rows[2] == "| lora | 10 | 61.1 ± 1.1 (n=3) | 61.1 ± 1.1 (n=3) |" and "63.0 ± 1.0 (n=3)" in rows[3]
    cmp = render.comparisons(recs, ["lora", "kasa"], ["a"])
    line = next(r for r in cmp if r.startswith("| lora | a |"))
    assert "| 3 | +1.90 |" in line and "KaSA higher" in line
    assert "| 6/0, 0.0312 |" in line  # 2 examples x 3 seeds only KaSA gets right: exact binomial p = 2 / 2**6
    assert render.comparisons(recs[:1] + recs[3:4], ["lora", "kasa"], ["a"])[2].endswith(
        "one seed: no interval |")


def test_every_row_against_lora_has_the_row_minus_lora_sign(tmp_path):
    recs = [_rec(tmp_path, "kasa", s, 60.0 + s + 2 + 0.1 * s, [True] * 10) for s in range(3)]
    recs += [_rec(tmp_path, "lora", s, 60.0 + s, [True] * 10) for s in range(3)]
    recs += [_rec(tmp_path, "pissa", s, 59.0 + s - 0.2 * s, [True] * 10) for s in range(3)]
    rows = render.against_baseline(recs, ["lora", "pissa", "kasa"], ["a"])
    assert rows[0].startswith("| row − lora (Avg.) |") and not any(r.startswith("| lora |") for r in rows)
    kasa = next(r for r in rows if r.startswith("| kasa |"))
    pissa = next(r for r in rows if r.startswith("| pissa |"))
    assert "| 3 | +2.10 |" in kasa and "row higher" in kasa
    assert "| 3 | -1.20 |" in pissa and "row lower" in pissa


def test_a_difference_without_spread_is_not_read_as_significant(tmp_path):
    recs = [_rec(tmp_path, "kasa", s, 64.0, [True] * 10) for s in range(3)]  # +4 at every seed: SD 0
    recs += [_rec(tmp_path, "lora", s, 60.0, [True] * 10) for s in range(3)]
    line = next(r for r in render.comparisons(recs, ["lora", "kasa"], ["a"]) if r.startswith("| lora | a |"))
    assert "| 3 | +4.00 |" in line and line.endswith("the same difference at every seed: no t-test |")


def test_mcnemar_of_a_multi_task_run_is_each_tasks_own(tmp_path):
    """A commonsense run is one folder with a record per task: each task's McNemar pools that task's generations
    only (a cache keyed by the run alone gave every task the first task's counts)."""
    def run(method: str, right: dict[str, int]) -> list[Record]:
        d = tmp_path / method
        (d / "generations").mkdir(parents=True)
        rows = [{"task": task, "prompt": f"q{i}", "answer": "true",
                 "generation": f"q{i}\n### Response:\nthe answer is {'true' if i < k else 'false'}"}
                for task, k in right.items() for i in range(10)]
        (d / "generations" / "epoch0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return [Record(table="t", method=method, variant="", task=task, seed=0, value=10.0 * k, metric="accuracy",
                       selection="last", source=str(d / "results.json"), epoch=0) for task, k in right.items()]

    recs = run("kasa", {"boolq": 10, "piqa": 2}) + run("lora", {"boolq": 4, "piqa": 2})
    cmp = render.comparisons(recs, ["lora", "kasa"], ["boolq", "piqa"])
    assert "| 6/0, 0.0312 |" in next(r for r in cmp if r.startswith("| lora | boolq |"))
    assert "| 0/0, 1 |" in next(r for r in cmp if r.startswith("| lora | piqa |"))
