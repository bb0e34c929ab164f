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
