"""Rows of a local data file, a ``datasets`` ``save_to_disk`` folder or a hub dataset split: the one reader behind
every family's "your own data" source (``dataset=files``, ``dataset=files_generation``) and the record sources.

Formats by extension: ``.csv``, ``.tsv``, ``.json`` (a list of records, or JSON lines), ``.jsonl``, ``.parquet``
(read by ``datasets``, so column types are inferred the same way for every format); a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; anything else is a hub id. Every problem is one
:class:`~kasa.errors.DatasetError` line naming the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from kasa.errors import DatasetError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
FORMATS = tuple(_FILE_BUILDERS)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars and no error log from ``datasets`` (its "Failed to read file" line repeats the error
    that the caller re-raises with the parser's reason)."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars = not datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def is_saved_dataset(path: Path) -> bool:
    """A folder ``save_to_disk`` wrote: a Dataset (``state.json``) or a DatasetDict (``dataset_dict.json``)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def looks_like_file(path: str) -> bool:
    """A path the user meant as a local file or folder, not a hub id."""
    p = Path(path).expanduser()
    return p.suffix.lower() in _FILE_BUILDERS or p.exists() or path.startswith(("/", "./", "../", "~"))


def load_rows(path: str, split: str = "train", name: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a local data file (:data:`FORMATS`), of a ``save_to_disk`` folder (its ``split`` when it holds
    several), or of a hub dataset split."""
    with quiet_datasets():
        return _load_rows(path, split, name, **kwargs)


def _load_rows(path: str, split: str, name: str | None, **kwargs: Any) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if is_saved_dataset(p):
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DatasetError(f"saved dataset '{path}' has no split '{split}' (has {sorted(ds)})")
            ds = ds[split]
        return [dict(r) for r in ds]
    import datasets

    suffix = p.suffix.lower()
    if suffix in _FILE_BUILDERS:
        if not p.exists():
            raise DatasetError(f"data file '{path}' does not exist")
        if p.is_file() and not p.read_bytes().strip():
            return []  # datasets fails on an empty file without saying why
        extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
        try:
            ds = datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=str(p), split="train", **extra, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- a malformed file: one line naming it
            root = root_cause(exc)
            raise DatasetError(f"data file '{path}' does not read as {suffix[1:]}: "
                               f"{' '.join(str(root).split())[:200] or type(root).__name__}") from None
    else:
        if looks_like_file(path) and not p.exists():
            raise DatasetError(f"data path '{path}' does not exist (a data file: {', '.join(FORMATS)}; a folder in the "
                               "hub's layout or written by datasets' save_to_disk; or a hub id)")
        try:
            ds = datasets.load_dataset(path, name, split=split, **kwargs)
        except Exception as exc:  # offline / unknown id: name the dataset and the way out
            raise DatasetError(f"could not load dataset '{path}' (split {split}): {exc}. Offline, use a "
                               f"packaged dataset config (e.g. dataset=instruction_seed) or point "
                               f"dataset.source_args at a local copy (a data file, or a folder in the hub's "
                               f"layout).") from exc
    return [dict(r) for r in ds]


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` / ``during handling`` chain."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


def require_rows(path: str, split: str = "train", what: str = "") -> list[dict[str, Any]]:
    """:func:`load_rows`, refusing an empty split in one line naming the file."""
    rows = load_rows(str(path), split=split)
    if not rows:
        raise DatasetError(f"{what + ' ' if what else ''}data '{path}' has no rows (an empty split)")
    return rows


def require_column(rows: list[dict[str, Any]], path: str, column: str, key: str) -> None:
    """``column`` (mapped by ``dataset.<key>``) is a column of ``rows``, else one line naming file and columns."""
    if column not in rows[0]:
        raise DatasetError(f"data '{path}' has no column '{column}' (dataset.{key}); its columns: "
                           f"{', '.join(map(str, rows[0]))}")


def require_text(rows: list[dict[str, Any]], path: str, column: str, hint: str = "") -> None:
    """Every value of ``column`` is a string, else one line naming file, column, row and value (plus ``hint``)."""
    for i, r in enumerate(rows):
        value = r.get(column)
        if not isinstance(value, str):
            raise DatasetError(f"data '{path}' column '{column}' is not text: row {i} holds "
                               f"{type(value).__name__} {value!r}{'; ' + hint if hint else ''}")
