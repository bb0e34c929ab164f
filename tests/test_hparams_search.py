"""Optuna search (conf/hparams_search/kasa_beta_gamma.yaml, hydra-optuna-sweeper): a 3-trial search on the tiny BERT
that a rerun resumes to 3 (not 6) results, an interrupted search that continues where it stopped with new points,
and a NaN metric that is a failed trial instead of the end of the search."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import kasa_train_cli

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

STUDY = "kasa_beta_gamma"


def _trials(sweep: Path) -> list:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{sweep / 'optuna.db'}").get_trials()


def _search(monkeypatch, capsys, sweep: Path, model_dir: Path, n_trials: int):
    """``kasa-train -m hparams_search=...`` through the console script's entry point, in this process: (exit code,
    captured stdout and stderr)."""
    code = kasa_train_cli(monkeypatch, "-m", "hparams_search=kasa_beta_gamma", f"model.name_or_path={model_dir}",
                          "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                          "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=2",
                          f"hparams_search.n_trials={n_trials}", f"sweep_dir={sweep}")
    return code, capsys.readouterr()


def test_three_trials_on_the_tiny_bert_and_a_rerun_stays_at_three(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "search"
    code, first = _search(monkeypatch, capsys, sweep, tiny_bert_dir, 3)
    assert code == 0, first.err[-3000:]
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:  # log-uniform over the paper's range
        assert set(t.params) == {"method.beta", "method.gamma"}
        assert all(1e-5 <= v <= 1.0 for v in t.params.values())
    results = [json.loads(p.read_text()) for p in sweep.glob("kasa-*/results.json")]
    assert len(results) == 3
    # the objective is each run's reported monitor metric
    assert sorted(t.value for t in trials) == pytest.approx(sorted(r["metrics"]["reported"]["accuracy"]
                                                                   for r in results))
    best = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {max(t.value for t in trials)}" in best
    code, again = _search(monkeypatch, capsys, sweep, tiny_bert_dir, 3)  # the same line again: nothing left to run
    assert code == 0, again.err[-3000:]
    assert len(_trials(sweep)) == 3 and len(list(sweep.glob("kasa-*/results.json"))) == 3
    assert "0 trial(s) to run" in again.out + again.err


@pytest.fixture
def fake_runs(monkeypatch):
    """kasa.recipe.run replaced by an instant one: every second run's metric is NaN."""
    import kasa.recipe as kt

    calls = []

    def fake_run(cfg, run_dir=None, callbacks=None):
        calls.append((cfg.method.beta, cfg.method.gamma))
        value = float("nan") if len(calls) % 2 == 0 else cfg.method.beta * cfg.method.gamma
        return {"metrics": {"reported": {cfg.dataset.monitor: value}}}

    monkeypatch.setattr(kt, "run", fake_run)
    return calls


def _search_in_process(monkeypatch, sweep: Path, n_trials: int) -> None:
    from hydra.core.global_hydra import GlobalHydra

    import kasa.cli.train as kt

    monkeypatch.setattr(sys, "argv", ["kasa-train", "-m", "hparams_search=kasa_beta_gamma",
                                      f"hparams_search.n_trials={n_trials}", f"sweep_dir={sweep}",
                                      "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
    try:
        kt._hydra_main()
    finally:
        GlobalHydra.instance().clear()


def test_interrupted_search_resumes_and_nan_is_a_failed_trial(monkeypatch, tmp_path, fake_runs):
    sweep = tmp_path / "search"
    _search_in_process(monkeypatch, sweep, 2)  # as if the search had been cut after 2 of 4 trials
    assert [t.state.name for t in _trials(sweep)] == ["COMPLETE", "FAIL"]  # the NaN did not stop the search
    _search_in_process(monkeypatch, sweep, 4)
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    assert len(fake_runs) == 4  # 2 + 2, not 2 + 4
    # the resumed search draws new points (its sampler seed is offset by the trials already in the study)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert all(t.value is None for t in trials if t.state.name == "FAIL")
    assert max(t.value for t in trials if t.state.name == "COMPLETE") == pytest.approx(
        max(b * g for i, (b, g) in enumerate(fake_runs) if i % 2 == 0))
    assert not any(math.isnan(t.value) for t in trials if t.value is not None)
