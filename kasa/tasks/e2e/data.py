"""E2E NLG data: the challenge's own release (``tuetschek/e2e_nlg`` on the hub, or a local folder of its CSV files)
and BIG-bench's ``gem/e2e_nlg`` for users who have BIG-bench, grouped as ``{mr: [references]}``."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kasa.data.splits import SPLITS, split_by_key
from kasa.errors import DatasetError
from kasa.tasks.e2e.metrics import group_references


def e2e_splits(source: str, split_seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1),
               path: str | None = None, eval_split: str = "validation",
               **load_kwargs: Any) -> dict[str, Mapping[str, list[str]]]:
    """``{"train": {mr: refs}, "eval": {mr: refs}}``.

    ``hub``: :func:`load_e2e_nlg` on ``path`` (default ``tuetschek/e2e_nlg``; a local folder of
    ``trainset.csv``/``devset.csv``/``testset_w_refs.csv``; or ``csv``/``json`` with ``data_files``).
    ``bigbench``: BIG-bench ``gem/e2e_nlg`` split by MR (``fractions``, ``split_seed``) from ``path`` or
    ``$KASA_BIGBENCH`` (BIG-bench's task folder or archive).
    """
    if source == "bigbench":
        s = load_e2e_bigbench(fractions=tuple(fractions), seed=split_seed, path=path)
        return {"train": s["train"], "eval": s[eval_split]}
    if source == "hub":
        s = load_e2e_nlg(path or "tuetschek/e2e_nlg", splits=["train", eval_split], **load_kwargs)
        return {"train": s["train"], "eval": s[eval_split]}
    raise DatasetError(f"unknown E2E source '{source}'; use hub or bigbench")


def flatten_grouped(grouped: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """``{mr: [refs]}`` -> one ``{"meaning_representation", "human_reference"}`` row per reference (training)."""
    return [{"meaning_representation": mr, "human_reference": ref} for mr, refs in grouped.items() for ref in refs]


def load_e2e_bigbench(
    fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, path: str | os.PathLike | None = None
) -> dict[str, "OrderedDict[str, list[str]]"]:
    """BIG-bench ``gem/e2e_nlg`` (1000 MR/reference pairs, 213 MRs) as grouped train/validation/test splits, for
    users who have BIG-bench: ``path`` (or ``$KASA_BIGBENCH``) is its task folder or archive
    (:func:`kasa.data.bigbench.bigbench_task`; no package ships it any more).

    Splits are by MR (no MR in two splits), decided by a seeded hash of the MR string, so they do not
    depend on file order or on the Python process.
    """
    from kasa.data.bigbench import bigbench_task

    examples = bigbench_task("gem/e2e_nlg", path)["examples"]
    pairs = [(ex["input"], ex["target"]) for ex in examples]
    return _split_pairs(pairs, fractions, seed)


def _split_pairs(
    pairs: Iterable[tuple[str, str]], fractions: Sequence[float], seed: int, names: Sequence[str] = SPLITS
) -> dict[str, "OrderedDict[str, list[str]]"]:
    parts = split_by_key(pairs, key=lambda p: p[0], fractions=fractions, names=names, seed=seed)
    return {name: group_references([p[0] for p in rows], [p[1] for p in rows]) for name, rows in parts.items()}


# The E2E challenge's own release (tuetschek/e2e-dataset): one CSV per split, columns ``mr`` and ``ref``; the hub
# dataset ``tuetschek/e2e_nlg`` is built from these files, with the columns renamed.
ORIGINAL_FILES = {"train": "trainset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"}
ORIGINAL_FIELDS = ("mr", "ref")
_LOCAL_FORMATS = (".csv", ".parquet", ".jsonl", ".json")


def _local_split_files(folder: Path, split: str) -> list[Path]:
    """A split's files in a local folder: the original release's name (``trainset.csv`` ...), else the hub's
    layouts (``<split>.csv``/``.jsonl``/``.json``/``.parquet``, ``[data/]<split>-*.parquet``)."""
    original = folder / ORIGINAL_FILES.get(split, f"{split}.csv")
    if original.is_file():
        return [original]
    for ext in _LOCAL_FORMATS:
        if (folder / f"{split}{ext}").is_file():
            return [folder / f"{split}{ext}"]
    for root in (folder, folder / "data"):
        found = sorted(root.glob(f"{split}-*.parquet"))
        if found:
            return found
    return []


def _read_rows(file: Path) -> list[dict[str, Any]]:
    import csv
    import json

    suffix = file.suffix.lower()
    if suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(file).to_pylist()
    text = file.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _load_e2e_folder(folder: Path, splits: Sequence[str] | None, mr_field: str, ref_field: str
                     ) -> dict[str, "OrderedDict[str, list[str]]"]:
    names = list(splits) if splits is not None else [s for s in ORIGINAL_FILES if _local_split_files(folder, s)]
    out: dict[str, OrderedDict[str, list[str]]] = {}
    for name in names:
        files = _local_split_files(folder, name)
        if not files:
            raise DatasetError(f"E2E folder '{folder}' has no '{name}' split: expected {ORIGINAL_FILES.get(name)} "
                              f"(the original release, columns mr,ref) or {name}.csv/.jsonl/.parquet (the hub's "
                              "columns meaning_representation, human_reference)")
        mrs: list[str] = []
        refs: list[str] = []
        for file in files:
            rows = _read_rows(file)
            cols = list(rows[0]) if rows else []
            fields = next((f for f in ((mr_field, ref_field), ORIGINAL_FIELDS) if all(c in cols for c in f)), None)
            if fields is None:
                raise DatasetError(f"E2E file '{file}' lacks fields {[mr_field, ref_field]} (or the original "
                                  f"{list(ORIGINAL_FIELDS)}); it has {cols}")
            mrs += [str(r[fields[0]]) for r in rows]
            refs += [str(r[fields[1]]) for r in rows]
        out[name] = group_references(mrs, refs)
    if not out:
        raise DatasetError(f"E2E folder '{folder}' holds none of {sorted(ORIGINAL_FILES.values())}")
    return out


def load_e2e_nlg(
    path: str = "tuetschek/e2e_nlg",
    splits: Sequence[str] | None = None,
    mr_field: str = "meaning_representation",
    ref_field: str = "human_reference",
    **load_kwargs: Any,
) -> dict[str, "OrderedDict[str, list[str]]"]:
    """The E2E NLG dataset, grouped per MR for each split.

    ``path``: the hub id ``tuetschek/e2e_nlg`` (splits train/validation/test, fields ``meaning_representation``
    and ``human_reference``); a local folder holding the original release's ``trainset.csv``, ``devset.csv``,
    ``testset_w_refs.csv`` (columns ``mr``, ``ref``) or files in the hub's columns named ``<split>.csv`` /
    ``.jsonl`` / ``.parquet``; or a ``datasets`` builder such as ``"csv"``/``"json"`` with
    ``data_files={split: file}`` in ``load_kwargs`` (which, like the hub id, go to ``datasets.load_dataset``).
    """
    local = Path(str(path)).expanduser()
    if not load_kwargs.get("data_files"):
        if local.is_dir():
            return _load_e2e_folder(local, splits, mr_field, ref_field)
        if str(path).startswith((".", "/", "~")):  # clearly local: do not ask the hub for it
            raise DatasetError(f"E2E path '{path}' does not exist (a folder of trainset.csv, devset.csv, "
                              "testset_w_refs.csv, or the hub id tuetschek/e2e_nlg)")
    import datasets

    try:
        ds = datasets.load_dataset(path, **load_kwargs)
    except Exception as exc:  # hub unreachable, missing file: one line that names the offline way
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise DatasetError(f"could not load E2E NLG from '{path}': {reason}. Offline, set dataset.source_args.path "
                          "to a folder holding the original trainset.csv, devset.csv and testset_w_refs.csv "
                          "(tuetschek/e2e-dataset)") from exc
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    names = list(splits) if splits is not None else list(ds.keys())
    out: dict[str, OrderedDict[str, list[str]]] = {}
    for name in names:
        if name not in ds:
            raise DatasetError(f"split '{name}' not in dataset {path!r} (has {sorted(ds.keys())})")
        split = ds[name]
        missing = [f for f in (mr_field, ref_field) if f not in split.column_names]
        if missing:
            raise DatasetError(f"dataset {path!r} split '{name}' lacks fields {missing} (has {split.column_names})")
        out[name] = group_references(split[mr_field], split[ref_field])
    return out
