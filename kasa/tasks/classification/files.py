"""``dataset=files``: your own classification or regression data, columns mapped by name.

``kasa-train dataset=files dataset.train=PATH [dataset.validation=PATH] dataset.text=COLUMN
[dataset.text_pair=COLUMN] dataset.label=COLUMN``. A path is a csv / tsv / json / jsonl / parquet file, a folder
written by ``datasets``' ``save_to_disk``, or a hub id (:func:`kasa.data.files.load_rows`). The label column decides
the task: floats mean regression; strings, integers or booleans are classes, named by ``dataset.label_names`` (that
order is the class index) or else by the sorted distinct training labels. Without a validation path the dev set is
drawn from the training rows: stratified by label for classes, ``val_fraction`` of them, seeded by ``split_seed``.

Everything that can be wrong with the data is one :class:`~kasa.errors.DatasetError` line naming the file and the
column, raised while the data load, before any model does.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from kasa.data.files import require_column, require_rows, require_text
from kasa.errors import DatasetError
from kasa.tasks.classification.data import Example, Splits, source, stratified_split

TEXT_HINT = "map dataset.text / dataset.text_pair to a column of strings"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _label_kind(rows: list[dict[str, Any]], path: str, column: str) -> str:
    kinds: dict[str, Any] = {}
    for r in rows:
        kinds.setdefault(_kind(r.get(column)), r.get(column))
    if "NoneType" in kinds:
        raise DatasetError(f"data '{path}' column '{column}' has empty labels")
    if len(kinds) > 1 and set(kinds) != {"int", "float"}:
        shown = ", ".join(f"{k} ({v!r})" for k, v in kinds.items())
        raise DatasetError(f"data '{path}' column '{column}' mixes label types: {shown}; use one type (floats for "
                           "regression; strings, integers or booleans for classes)")
    if set(kinds) - {"int", "float", "str", "bool"}:
        raise DatasetError(f"data '{path}' column '{column}' holds {', '.join(kinds)} labels; use numbers or strings")
    return "float" if "float" in kinds else next(iter(kinds))


def _examples(rows: list[dict[str, Any]], text: str, text_pair: str | None, label: str,
              to_label: Any) -> list[Example]:
    return [Example(r[text], to_label(r[label]), r[text_pair] if text_pair else None) for r in rows]


@source("files")
def files(train: str | None = None, validation: str | None = None, text: str = "text", text_pair: str | None = None,
          label: str = "label", label_names: Sequence[Any] | None = None, val_fraction: float = 0.1,
          split_seed: int = 0, train_split: str = "train", validation_split: str = "validation",
          max_train: int | None = None, max_validation: int | None = None) -> Splits:
    """Splits of your own files (see the module docstring); ``*_split``: the split of a hub id or saved DatasetDict."""
    if not train:
        raise DatasetError("dataset.train is not set: give a data file (csv, tsv, json, jsonl, parquet), a "
                           "save_to_disk folder or a hub id")
    parts = {"train": (train, require_rows(train, train_split, "training"))}
    if validation:
        parts["validation"] = (validation, require_rows(validation, validation_split, "validation"))
    for path, rows in parts.values():
        for key, column in (("text", text), ("text_pair", text_pair), ("label", label)):
            if column is not None:
                require_column(rows, path, column, key)
        require_text(rows, path, text, TEXT_HINT)
        if text_pair:
            require_text(rows, path, text_pair, TEXT_HINT)
    kinds = {part: _label_kind(rows, path, label) for part, (path, rows) in parts.items()}
    numeric = {part: "number" if k in ("int", "float") else k for part, k in kinds.items()}
    if len(set(numeric.values())) > 1:
        raise DatasetError(f"label column '{label}' holds {kinds['train']} labels in '{train}' but "
                           f"{kinds['validation']} labels in '{validation}'")
    regression = "float" in kinds.values()
    train_rows = parts["train"][1]
    if regression:
        if label_names:
            raise DatasetError(f"column '{label}' of '{train}' holds floats (regression); dataset.label_names is for "
                               "classes: set it to null, or give the labels as strings or integers")
        names: list[str] = []

        def to_label(v: Any) -> float:
            return float(v)
    else:
        seen = sorted({r[label] for r in train_rows}, key=lambda v: (str(type(v)), v))
        if label_names:
            names = [str(n) for n in label_names]
            unknown = [v for v in seen if str(v) not in names]
            if unknown:
                raise DatasetError(f"column '{label}' of '{train}' holds {unknown[:5]}, not in dataset.label_names "
                                   f"{names}")
        else:
            names = [str(v) for v in seen]
        index = {n: i for i, n in enumerate(names)}

        def to_label(v: Any) -> int:
            return index[str(v)]
    train_ex = _examples(train_rows, text, text_pair, label, to_label)
    if validation:
        val_rows = parts["validation"][1]
        if not regression:
            unseen = sorted({str(r[label]) for r in val_rows} - set(index))
            if unseen:
                raise DatasetError(f"validation data '{validation}' column '{label}' has label(s) {unseen[:5]} never "
                                   f"seen in training data '{train}' (classes: {names})")
        val_ex = _examples(val_rows, text, text_pair, label, to_label)
    elif regression:
        if not 0 < val_fraction < 1:
            raise DatasetError(f"dataset.val_fraction={val_fraction} must be in (0, 1)")
        shuffled = list(train_ex)
        random.Random(split_seed).shuffle(shuffled)
        n_val = max(1, round(len(shuffled) * val_fraction))
        val_ex, train_ex = shuffled[:n_val], shuffled[n_val:]
    else:
        train_ex, val_ex = stratified_split(train_ex, val_fraction, split_seed)
    if not train_ex or not val_ex:
        empty = "training" if not train_ex else "validation"
        raise DatasetError(f"'{train}': {len(train_rows)} rows leave an empty {empty} split at "
                           f"val_fraction={val_fraction}")
    rng = random.Random(split_seed)
    if max_train is not None and max_train < len(train_ex):
        train_ex = rng.sample(train_ex, max_train)
    if max_validation is not None and max_validation < len(val_ex):
        val_ex = rng.sample(val_ex, max_validation)
    return Splits(train_ex, val_ex, names)
