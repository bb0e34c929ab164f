"""Rows of a hub dataset split or of a local data file, for the families that read records (generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kasa.errors import DatasetError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_rows(path: str, split: str = "train", name: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a hub dataset split, or of a local data file (``path`` ending .json/.jsonl/.csv/.parquet)."""
    import datasets

    suffix = Path(path).suffix.lower()
    if suffix in _FILE_BUILDERS:
        if not Path(path).exists():
            raise DatasetError(f"data file '{path}' does not exist")
        ds = datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
    else:
        try:
            ds = datasets.load_dataset(path, name, split=split, **kwargs)
        except Exception as exc:  # offline / unknown id: name the dataset and the way out
            raise DatasetError(f"could not load dataset '{path}' (split {split}): {exc}. Offline, use a "
                               f"packaged dataset config (e.g. dataset=instruction_seed) or point "
                               f"dataset.source_args at a local copy (a data file, or a folder in the hub's "
                               f"layout).") from exc
    return [dict(r) for r in ds]
