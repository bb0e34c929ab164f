"""`kasa-train -m method=...` for every registered method, on the tiny local BERT: the console script's entry point
and Hydra's multirun launcher, in this process (the CLI process itself is tested in tests/test_multirun_failures.py).

Hydra multirun takes one override list for the whole sweep, so methods whose paper defaults do not fit
the tiny model (2 blocks, hidden 32) run as their own sweep with the override they need; the defaults
themselves stay the papers'. All methods together take about a minute on one core: short enough for the
default suite, so no reduced variant is kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import kasa_train_cli, tiny_cls

from kasa.methods import REGISTRY

METHODS = sorted(REGISTRY)
# Overrides a method needs on the tiny model (never a change of its defaults).
OVERRIDES: dict[str, tuple[str, ...]] = {
    "adapter_d": ("method.drop_layers=1",),  # the paper drops the lowest 5 blocks; the tiny model has 2
}


def _groups(methods: list[str]) -> dict[tuple[str, ...], list[str]]:
    """Methods grouped by the overrides they need: one multirun per group."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for m in methods:
        groups.setdefault(OVERRIDES.get(m, ()), []).append(m)
    return groups


def _sweep(monkeypatch, capsys, tiny_bert_dir: Path, sweep_dir: Path, methods: list[str],
           overrides: tuple[str, ...]) -> None:
    code = kasa_train_cli(monkeypatch, "-m", f"method={','.join(methods)}",
                          *tiny_cls(tiny_bert_dir), "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "benchmark.batch_size=8",
                          "benchmark.eval_batch_size=16", f"hydra.sweep.dir={sweep_dir}",
                          "hydra.sweep.subdir=${method.name}", *overrides)
    assert code == 0, f"{methods}: {capsys.readouterr().err[-3000:]}"


def _check_results(sweep_dir: Path, method: str) -> None:
    path = sweep_dir / method / "results.json"
    assert path.exists(), f"no results.json for {method}"
    res = json.loads(path.read_text())
    assert res["method"] == method and res["config"]["method"]["name"] == method
    assert len(res["history"]) == 1
    for which in ("final", "best"):
        metrics = res["metrics"][which]
        assert set(metrics) >= {"accuracy", "f1"}, (method, metrics)
        assert all(math.isfinite(v) for v in metrics.values()), (method, which, metrics)
    params = res["params"]
    assert params["total"] >= params["trainable"] >= params["adapter"] > 0, (method, params)
    # AdaLoRA also reports its final budget (init_r 12 -> target_r 8: 2/3 of the initial count); no other method
    if method == "adalora":
        assert params["adapter_final"] * 3 == params["adapter"] * 2, params
    else:
        assert "adapter_final" not in params, (method, params)


def _run_and_check(monkeypatch, capsys, tiny_bert_dir: Path, tmp_path: Path, methods: list[str]) -> None:
    for i, (overrides, group) in enumerate(_groups(methods).items()):
        _sweep(monkeypatch, capsys, tiny_bert_dir, tmp_path / f"sweep{i}", group, overrides)
        for m in group:
            _check_results(tmp_path / f"sweep{i}", m)


def test_every_method_trains_from_the_cli(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    _run_and_check(monkeypatch, capsys, tiny_bert_dir, tmp_path, METHODS)


def test_tables_name_registered_methods():
    # A renamed method would leave a stale entry that silently tests nothing.
    assert set(OVERRIDES) <= set(METHODS)
