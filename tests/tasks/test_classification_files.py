"""``dataset=files``: every format, the label rules, and each bad input as one line naming the file and column,
on small files this test writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kasa.errors import DatasetError
from kasa.tasks.classification.data import load_splits

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull", "grand", "weak"]


def rows(n: int = 40, label=lambda i: ["pos", "neg"][i % 2]) -> list[dict]:
    return [{"sentence": f"{WORDS[i % 10]} movie number {i}", "second": f"pair {i}", "y": label(i)} for i in range(n)]


def write(path: Path, records: list[dict]) -> Path:
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(records[0]), delimiter="\t" if suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(records)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:  # a save_to_disk folder
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def load(train: Path, validation: Path | None = None, **kw):
    return load_splits("files", train=str(train), validation=str(validation) if validation else None,
                       text=kw.pop("text", "sentence"), label=kw.pop("label", "y"), **kw)


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.json", "d.jsonl", "d.parquet", "saved"])
def test_every_format_gives_the_same_splits(tmp_path, name):
    s = load(write(tmp_path / name, rows()), val_fraction=0.25, text_pair="second")
    assert s.label_names == ["neg", "pos"] and len(s.train) == 30 and len(s.validation) == 10
    assert {e.label for e in s.validation} == {0, 1}  # stratified: both classes in the dev set
    assert s.train[0].text_pair.startswith("pair ")
    again = load(write(tmp_path / ("b" + name), rows()), val_fraction=0.25, text_pair="second")
    assert [e.text for e in again.validation] == [e.text for e in s.validation]  # seeded


def test_labels_floats_are_regression_and_names_fix_the_order(tmp_path):
    reg = load(write(tmp_path / "r.jsonl", rows(label=lambda i: i / 10)), val_fraction=0.2)
    assert reg.num_labels == 1 and isinstance(reg.train[0].label, float) and len(reg.validation) == 8
    ints = load(write(tmp_path / "i.csv", rows(label=lambda i: i % 3 + 1)))
    assert ints.label_names == ["1", "2", "3"] and {e.label for e in ints.train} == {0, 1, 2}
    named = load(write(tmp_path / "n.jsonl", rows()), label_names=["pos", "neg"])
    assert named.label_names == ["pos", "neg"]
    assert all(e.label == int(e.text.split()[-1]) % 2 for e in named.train)  # even rows are "pos": class 0
    dev = load(write(tmp_path / "t.jsonl", rows()), write(tmp_path / "v.jsonl", rows(6)))
    assert len(dev.train) == 40 and len(dev.validation) == 6


@pytest.mark.parametrize("case, message", [
    ("missing_file", "data file '.*nope.csv' does not exist"),
    ("missing_column", "has no column 'sentence' \\(dataset.text\\); its columns: text, y"),
    ("empty", "has no rows \\(an empty split\\)"),
    ("mixed", "column 'y' mixes label types: str \\('pos'\\), int \\(1\\)"),
    ("unseen", "column 'y' has label\\(s\\) \\['meh'\\] never seen in training data"),
    ("not_text", "column 'sentence' is not text: row 0 holds int 7"),
    ("no_train", "dataset.train is not set"),
    ("float_with_names", "holds floats \\(regression\\); dataset.label_names is for classes"),
])
def test_bad_input_is_one_line_naming_file_and_column(tmp_path, case, message):
    good = write(tmp_path / "good.jsonl", rows())
    args: dict = {}
    if case == "missing_file":
        train = tmp_path / "nope.csv"
    elif case == "missing_column":
        train = write(tmp_path / "c.jsonl", [{"text": "x", "y": "pos"}])
    elif case == "empty":
        train = tmp_path / "e.jsonl"
        train.write_text("")
    elif case == "mixed":
        train = write(tmp_path / "m.jsonl", [{"sentence": "a", "y": "pos"}, {"sentence": "b", "y": 1}])
    elif case == "unseen":
        train, args["validation"] = good, write(tmp_path / "v.jsonl", [{"sentence": "a", "y": "meh"}])
    elif case == "not_text":
        train = write(tmp_path / "n.jsonl", [{"sentence": 7, "y": "pos"}])
    elif case == "no_train":
        with pytest.raises(DatasetError, match=message):
            load_splits("files", train=None)
        return
    else:
        train, args["label_names"] = write(tmp_path / "f.jsonl", rows(label=lambda i: i / 3)), ["a", "b"]
    with pytest.raises(DatasetError, match=message) as info:
        load(train, **args)
    assert "\n" not in str(info.value)


def test_kasa_train_on_files_fails_in_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, tiny_bert_dir):
    """The CLI path: a data problem is one line and exit 2, and no tokenizer or model was loaded."""
    from conftest import kasa_train_cli

    def never(*args, **kwargs):
        raise AssertionError("a model loaded before the data were checked")

    monkeypatch.setattr("kasa.models.load_model", never)
    monkeypatch.setattr("kasa.models.load_tokenizer", never)
    data = write(tmp_path / "mixed.jsonl", [{"sentence": "a", "y": "pos"}, {"sentence": "b", "y": 1}])
    code = kasa_train_cli(monkeypatch, "dataset=files", f"dataset.train={data}", "dataset.text=sentence",
                          "dataset.label=y", f"model.name_or_path={tiny_bert_dir}", f"hydra.run.dir={tmp_path / 'run'}")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "mixes label types" in err[0], err


def test_files_trains_end_to_end(tmp_path, tiny_bert_dir):
    from kasa.config import compose
    from kasa.recipe import run

    train = write(tmp_path / "train.csv", rows(48))
    cfg = compose(["dataset=files", f"dataset.train={train}", "dataset.text=sentence", "dataset.label=y",
                   "dataset.val_fraction=0.25", f"model.name_or_path={tiny_bert_dir}", "trainer.max_epochs=1",
                   "method.r=2", "trainer.enable_progress_bar=false"])
    res = run(cfg, run_dir=tmp_path / "run")
    assert res["split_sizes"] == {"train": 36, "validation": 12}
    assert 0.0 <= res["metrics"]["final"]["accuracy"] <= 1.0
