"""Failure records of multirun points (read by :class:`kasa.config.hydra.KasaCallback` at the end of a sweep).

- A multirun point that fails leaves ``failed.json`` in its folder (:func:`record_failure`: the error, the
  point's overrides and config hash) and the sweep goes on; at the end :class:`KasaCallback` prints every
  failed point and exits 2 (1 if a point crashed with a traceback). A failed point has no results.json, so
  rerunning the sweep retries it; a point that later succeeds (or is skipped as finished) drops its record.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

FAILED = "failed.json"
# What Hydra writes into a run folder by itself; a failed run's folder holding only these is removed.
HYDRA_BOOKKEEPING = (".hydra",)


def record_failure(dirs: list[Path], exc: BaseException, overrides: list[str], config_hash: str | None,
               with_traceback: bool = False) -> list[Path]:
    """Write ``failed.json`` into each folder in ``dirs`` (created if needed); returns the files written."""
    rec: dict[str, Any] = {"error": str(exc), "type": type(exc).__name__, "overrides": list(overrides),
                           "config_hash": config_hash, "time": time.time()}
    if with_traceback:
        rec["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    written = []
    for d in dict.fromkeys(Path(p) for p in dirs):
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / (FAILED + ".tmp")
            tmp.write_text(json.dumps(rec, indent=2))
            tmp.replace(d / FAILED)
            written.append(d / FAILED)
        except OSError as err:  # the record is a courtesy; the summary still names the point
            print(f"[kasa] could not write {d / FAILED}: {err}", file=sys.stderr)
    return written


def clear_failure(run_dir: str | Path | None) -> None:
    """Drop a point's old failure record once it has results."""
    if run_dir:
        (Path(run_dir) / FAILED).unlink(missing_ok=True)


def remove_if_empty(run_dir: str | Path | None, stop: str | Path | None = None) -> bool:
    """Remove a failed run's folder when it holds nothing but empty folders and Hydra's own records
    (``.hydra/``, the job log), then its parents up to ``stop`` while they are empty. Returns whether it went."""
    if not run_dir:
        return False
    d = Path(run_dir)
    here = Path.cwd().resolve()
    if not d.is_dir() or d.resolve() == here or d.resolve() in here.parents:  # never the working folder
        return False
    for p in d.rglob("*"):
        if any(part in HYDRA_BOOKKEEPING for part in p.relative_to(d).parts):
            continue
        if p.is_file() and not (p.parent == d and p.suffix == ".log"):
            return False
    shutil.rmtree(d, ignore_errors=True)
    stop = Path(stop).resolve() if stop else Path.cwd().resolve()
    parent = d.resolve().parent
    while parent != stop and stop in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return not d.exists()


def failures(sweep_dir: Path, since: float = 0.0) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` of every ``failed.json`` in the job folders under ``sweep_dir`` written after ``since``."""
    out = []
    for path in sorted(sweep_dir.glob(f"**/{FAILED}")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if float(rec.get("time", 0)) >= since:
            out.append((path, rec))
    return out
