"""``kasa-data preview``: what a run is fed, from kasa-train's own composed config, without loading the model."""

from __future__ import annotations

import pytest
from conftest import tiny_cls

from kasa.cli.data import main, percentiles, preview
from kasa.config import compose
from kasa.errors import DatasetError


@pytest.fixture
def no_model(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("kasa-data loaded a model")

    monkeypatch.setattr("kasa.models.load_model", never)


def test_classification_labels_lengths_and_examples(tiny_bert_dir, no_model):
    res = preview(compose([*tiny_cls(tiny_bert_dir), "dataset.max_length=8"]), n=2)
    assert sum(res["labels_train"].values()) == res["split_sizes"]["train"]
    assert res["truncated"] > 0 and res["train_lengths"]["max"] > 8  # cut at max_length=8, counted
    text = "\n".join(res["lines"])
    assert "--- train example 1" in text and "[CLS]" in text and "truncated" in text


def test_causal_lm_shows_the_loss_mask_and_drops(tiny_causal_dir, commonsense_data, no_model):
    cfg = compose(["benchmark=commonsense", f"model.name_or_path={tiny_causal_dir}", *commonsense_data])
    res = preview(cfg, n=1)
    example = res["lines"][2]
    assert example.startswith("[[") and "### Response:" in example.split("]]")[0]  # the prompt carries no loss
    assert "the correct answer is" in example.split("]]")[1]  # the completion does
    tight = preview(compose(["benchmark=commonsense", f"model.name_or_path={tiny_causal_dir}", *commonsense_data,
                             "benchmark.max_length=60"]))
    assert tight["truncated"] > 0 and tight["train_lengths"]["max"] > 60
    with pytest.raises(DatasetError, match="every training example's prompt fills benchmark.max_length=8"):
        preview(compose(["benchmark=commonsense", f"model.name_or_path={tiny_causal_dir}", *commonsense_data,
                         "benchmark.max_length=8"]))


def test_cli_prints_and_bad_input_is_one_line(tiny_bert_dir, capsys, no_model):
    assert main(["preview", *tiny_cls(tiny_bert_dir), "-n", "1"]) == 0
    assert "labels (train)" in capsys.readouterr().out
    assert main(["preview", "dataset=files"]) == 2  # dataset.train is required
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kasa-data: error: ") and "dataset.train" in err[0]


def test_percentiles():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
