"""BIG-bench task files for users who have them: no package on the index ships BIG-bench's task data any more
(``bigbench==1.0.0`` left it on 2026-12-07; 0.0.1 has none), so it is a source, never a default.

A task is read from ``path`` (or ``$KASA_BIGBENCH``): a folder holding ``<task>/task.json`` (a BIG-bench checkout's
``bigbench/benchmark_tasks``) or the ``bigbench-1.0.0.tar.gz`` source archive, whose task files are extracted into
kasa's cache once.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from kasa.assets import cache_dir
from kasa.errors import MissingAssetError

ARCHIVE_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _where(path: str | os.PathLike | None) -> Path:
    where = path or os.environ.get("KASA_BIGBENCH")
    if not where:
        raise MissingAssetError(
            "BIG-bench task data is not packaged any more (bigbench==1.0.0 left the index): set "
            "dataset.source_args.path (or $KASA_BIGBENCH) to a BIG-bench checkout's bigbench/benchmark_tasks folder "
            "or to bigbench-1.0.0.tar.gz")
    where = Path(where).expanduser()
    if not where.exists():
        raise MissingAssetError(f"BIG-bench path {where} does not exist")
    return where


def bigbench_task(task: str, path: str | os.PathLike | None = None) -> dict:
    """The parsed ``task.json`` of a BIG-bench task (e.g. ``intent_recognition`` or ``gem/e2e_nlg``)."""
    where = _where(path)
    if where.is_dir():
        file = where / task / "task.json"
        if not file.exists():
            raise MissingAssetError(f"BIG-bench task '{task}' not found: no {file}")
        return json.loads(file.read_text())
    cached = cache_dir() / "bigbench-1.0.0" / task / "task.json"
    if not cached.exists():
        wanted = ARCHIVE_PREFIX + task + "/task.json"
        try:
            with tarfile.open(where, "r:*") as tar:
                member = next((m for m in tar if m.name == wanted), None)
                if member is None:
                    raise MissingAssetError(f"BIG-bench task '{task}' is not in {where}")
                data = tar.extractfile(member).read()
        except tarfile.ReadError:
            raise MissingAssetError(f"BIG-bench path {where} is neither a folder of tasks nor a readable archive "
                                    "(bigbench-1.0.0.tar.gz)") from None
        json.loads(data)  # refuse to cache a corrupt file
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")  # one per process: parallel readers
        tmp.write_bytes(data)
        tmp.replace(cached)
    return json.loads(cached.read_text())
