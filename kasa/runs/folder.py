"""Run folders that never lose or mix data.

A run folder belongs to one configuration, named by :func:`kasa.runs.hashing.config_hash`:

- ``config.yaml`` (the resolved config, written before training starts) and ``results.json`` (at the end)
  say whose folder it is; a run refuses a folder that holds another config's run (:func:`check_folder`).
- ``resume=<run dir>`` continues the run from its own saved config (:func:`resume_config`); overrides on the
  resume command that would change what the run computes are refused.
- ``run.lock`` claims the folder for one process (:class:`RunLock`): a second process on the same sweep point
  skips it; the lock of a dead process is taken over.
- Checkpoints are written atomically (:class:`AtomicCheckpointIO`) and carry the config hash, the wall time so
  far and the resume points (:class:`RunRecord`); on resume a checkpoint that does not load is set aside and the
  run falls back to an older one of the same config, or starts fresh (:func:`choose_checkpoint`).
- ``logs/metrics.csv`` keeps the whole history across resumes (:class:`AppendingCSVLogger`, :func:`trim_metrics`).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from kasa.errors import (
    CheckpointCorrupt,  # noqa: F401  (re-exported)
    ConfigError,
)
from kasa.runs.checkpoints import CHECKPOINT_DIR, _candidates, _stamp, choose_checkpoint
from kasa.runs.files import (
    CONFIG_FILE,
    RESULTS_FILE,
    atomic_file,
    atomic_write_text,
    plain_config,
    read_json_or_none,
    saved_config,
)
from kasa.runs.hashing import HASH_EXCLUDE, config_hash

LOCK_FILE = "run.lock"
METRICS = Path("logs") / "metrics.csv"
_ABSENT = "<absent>"  # a key one config has and the other has not


def _say(msg: str) -> None:
    print(f"[kasa] {msg}", flush=True)


def is_rank_zero() -> bool:
    """Global rank 0 (or a single process), from the environment launchers set (as Lightning reads it).

    Only rank 0 claims, checks and writes the run folder; the other ranks of a data-parallel run re-run the
    same command and must not see rank 0's lock or config as someone else's.
    """
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


def write_config(run_dir: Path, cfg: DictConfig, key: str) -> None:
    """``<run dir>/config.yaml``: the resolved config, written before training so an interrupted run has it."""
    text = (f"# kasa run config (resolved), config_hash {key}; resume with: kasa-train resume={run_dir}\n"
            + OmegaConf.to_yaml(plain_config(cfg)))
    atomic_write_text(run_dir / CONFIG_FILE, text)


def _excluded(dotted: str) -> bool:
    return any(dotted == ex or dotted.startswith(ex + ".") for ex in HASH_EXCLUDE)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys (outside :data:`kasa.runs.hashing.HASH_EXCLUDE`) whose values differ between two resolved configs."""
    out: list[tuple[str, Any, Any]] = []
    for k in sorted(set(a) | set(b), key=str):
        dotted = f"{prefix}{k}"
        if _excluded(dotted) or (not prefix and k == "hydra"):
            continue
        va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, dotted + ".")
        elif va != vb:
            out.append((dotted, va, vb))
    return out


def _describe(diff: list[tuple[str, Any, Any]], here: str, there: str, limit: int = 4) -> str:
    parts = [f"{k} ({va!r} {here}, {vb!r} {there})" for k, va, vb in diff[:limit]]
    return ", ".join(parts) + (f" and {len(diff) - limit} more" if len(diff) > limit else "")


def resume_folder(resume: Any) -> Path | None:
    """The run folder a ``resume`` value names: a folder, or a checkpoint inside ``<run dir>/checkpoints/``.

    None for ``null`` / ``last`` / ``auto`` and for a checkpoint file outside a run folder.
    """
    if not resume or resume in ("last", "auto"):
        return None
    path = Path(str(resume))
    if path.is_dir():
        return path
    if path.is_file() and path.parent.name == CHECKPOINT_DIR and saved_config(path.parent.parent) is not None:
        return path.parent.parent
    return None


def _override_keys(overrides: list[str]) -> list[tuple[str, str]]:
    """(config key, override text) of each command-line override, as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.key_or_group if not ov.package else f"{ov.package}.{ov.key_or_group}"
        out.append((key, ov.input_line or f"{key}=..."))
    return out


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at a dotted key, plain containers for nodes; ``_ABSENT`` where there is none."""
    node = OmegaConf.select(cfg, key, default=_ABSENT)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def resume_config(cfg: DictConfig, folder: Path, overrides: list[str] | None) -> DictConfig:
    """The config to continue the run in ``folder`` with: the run's own saved config.

    ``overrides``: the resume command's overrides (Hydra's task overrides). Each one must not change what the
    run computes: a key in :data:`kasa.runs.hashing.HASH_EXCLUDE` (progress bar, logger, ...) is taken from ``cfg``; any
    other key must already have the run's value. ``None`` (the Python API): ``cfg`` itself must be the run's
    config up to the excluded keys. Anything else is refused in one line naming it.
    """
    found = saved_config(folder)
    if found is None:
        raise ConfigError(f"resume={folder}: no config.yaml, results.json or .hydra/config.yaml there, so the "
                          "run's config is unknown (is it a kasa run folder?)")
    saved, source = found
    merged = OmegaConf.create(saved)
    if overrides is None:
        diff = config_diff(plain_config(cfg), saved)
        if diff:
            raise ConfigError(f"resume={folder}: the given config differs from the run's ({source}) in "
                              f"{_describe(diff, 'given', 'in the run')}; resume with the run's own config "
                              "(kasa.runs.folder.saved_config) or pass the command-line overrides")
        taken = [ex for ex in HASH_EXCLUDE if _value(cfg, ex) not in (_ABSENT, None)]
    else:
        refused, taken = [], []
        for key, text in _override_keys(overrides):
            if _excluded(key):
                taken.append(key)
            elif (mine := _value(cfg, key)) == _ABSENT:
                refused.append(text)  # e.g. experiment=...: not a key of the config, so it cannot be checked
            elif mine != (theirs := _value(merged, key)):
                refused.append(f"{text} (the run has {theirs!r})")
        if refused:
            raise ConfigError(f"resume={folder}: {', '.join(refused)} would change what the run computes "
                              f"(its config: {folder / source}); resume without "
                              f"{'it' if len(refused) == 1 else 'them'}, or start a new run")
    for key in taken:
        OmegaConf.update(merged, key, _value(cfg, key), merge=False, force_add=True)
    merged.resume = str(cfg.get("resume"))
    return merged


# -- folder ownership ----------------------------------------------------------------------------------
def _folder_owner(run_dir: Path) -> tuple[str, dict[str, Any], str] | None:
    """(config hash, config, file) of the run a folder holds: results.json, else config.yaml; None if empty."""
    res = read_json_or_none(run_dir / RESULTS_FILE)
    if res is not None and res.get("config_hash"):
        return res["config_hash"], res.get("config") or {}, RESULTS_FILE
    if (run_dir / CONFIG_FILE).is_file():
        saved = plain_config(OmegaConf.load(run_dir / CONFIG_FILE))
        return config_hash(OmegaConf.create(saved)), saved, CONFIG_FILE
    return None


def check_folder(run_dir: Path, key: str, cfg: DictConfig) -> None:
    """Refuse a folder that holds another config's run (its results.json or config.yaml), naming both."""
    owner = _folder_owner(Path(run_dir))
    if owner is None or owner[0] == key:
        return
    other, theirs, source = owner
    diff = config_diff(plain_config(cfg), theirs)
    why = (f"it differs in {_describe(diff, 'here', 'there')}" if diff
           else "no config key differs: it was hashed by another kasa version")
    raise ConfigError(f"run folder {run_dir} holds another config's run ({theirs.get('run_name', '?')}, "
                      f"config_hash {other}, {source}): {why}; choose another "
                      f"folder (hydra.run.dir / sweep_dir), or resume that run with resume={run_dir}")


def finished_results(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The results.json in ``run_dir`` if it was written for the config whose hash is ``key``."""
    res = read_json_or_none(Path(run_dir) / RESULTS_FILE)
    return res if res is not None and res.get("config_hash") == key else None


# -- one process per run folder ----------------------------------------------------------------------
def _process_start(pid: int) -> float | None:
    """When ``pid`` started (Unix time), from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process named in a lock still runs. Another host's process cannot be checked: alive."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        pid = int(holder.get("pid"))
    except (TypeError, ValueError):  # not a lock kasa wrote
        return False
    if pid == os.getpid():  # runs in one process are sequential: our own lock is a leftover
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    started = _process_start(pid)
    # the pid was reused by a process that started after the lock was written
    return not (started is not None and started > float(holder.get("started_unix", 0)) + 2)


@dataclass
class RunLock:
    """``<run dir>/run.lock``, created with O_CREAT|O_EXCL, holding pid, host and start time."""

    path: Path
    holder: dict[str, Any]

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock | None:
        """The lock, or None (after one line saying who holds it) when a live process holds it."""
        path = Path(run_dir) / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "started_unix": time.time()}
        body = json.dumps(me).encode()
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return cls._take_over(path, me)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return cls(path, me)

    @classmethod
    def _take_over(cls, path: Path, me: dict[str, Any]) -> RunLock | None:
        holder = read_json_or_none(path)
        age = time.time() - _mtime(path)
        if holder is None:  # vanished or half-written: its writer is gone if it stayed unreadable
            if path.exists() and age < 60:
                _say(f"skipped: {path.parent} is being claimed by another process ({path} is being written)")
                return None
            holder = {"pid": "?", "host": "?", "started": "?"}
        elif _holder_alive(holder):
            _say(f"skipped: {path.parent} is being trained by pid {holder.get('pid')} on {holder.get('host')} "
                 f"since {holder.get('started')} ({path}; delete it if that process is gone)")
            return None
        # One taker at a time: a second O_EXCL file, so two processes never both replace the stale lock.
        guard = path.with_name(LOCK_FILE + ".takeover")
        if guard.exists() and time.time() - _mtime(guard) > 60:
            guard.unlink(missing_ok=True)
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            _say(f"skipped: {path.parent}: another process is taking over its stale lock")
            return None
        try:
            if read_json_or_none(path) not in (holder, None) and path.exists():
                _say(f"skipped: {path.parent} was claimed by another process meanwhile")
                return None
            _say(f"{path}: pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')}) is gone; "
                 "taking the run over")
            atomic_write_text(path, json.dumps(me))
            return cls(path, me)
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if read_json_or_none(self.path) == self.holder:
            self.path.unlink(missing_ok=True)


def remove_partial_files(run_dir: Path) -> None:
    """Temporary files of writes a kill interrupted (checkpoints, metrics, config; only under the run lock)."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / METRICS.parent):
        for tmp in Path(folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


class RunRecord(L.Callback):
    """Stores in every checkpoint what the next segment of the run needs: the config hash (checked on resume),
    the wall time of all segments so far and the resume points."""

    def __init__(self, key: str, t0: float, wall_before: float = 0.0, resumes: list[dict] | None = None):
        self.key, self.t0, self.wall_before = key, t0, wall_before
        self.resumes: list[dict[str, Any]] = list(resumes or [])

    def wall_time_s(self) -> float:
        return self.wall_before + time.time() - self.t0

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["kasa_run"] = {"config_hash": self.key, "wall_time_s": self.wall_time_s(),
                                  "resumes": list(self.resumes)}


# -- one call: claim, check and prepare a run folder --------------------------------------------------------
@dataclass
class Prepared:
    """What :func:`prepare` decided: skip (``skipped`` is the dict ``run()`` returns) or train."""

    record: RunRecord
    skipped: dict[str, Any] | None = None
    checkpoint: str | None = None
    lock: RunLock | None = None

    def begin(self, cfg: DictConfig) -> None:
        """Write ``config.yaml`` (rank 0), once everything has loaded and training is about to start: a run that
        fails on bad input before that leaves no config to claim the folder with."""
        if self.lock is not None:
            write_config(self.lock.path.parent, cfg, self.record.key)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def prepare(run_dir: Path, cfg: DictConfig, key: str, mode: str, t0: float,
            explicit: Path | None = None) -> Prepared:
    """Check and claim ``run_dir`` for the config ``key`` and pick the checkpoint to resume from.

    ``mode``: ``fresh`` (resume=null), ``auto`` (skip if finished, else resume if there is a checkpoint) or
    ``resume`` (resume=last / a run dir / a .ckpt; ``explicit`` is a named checkpoint file).
    A folder holding another config's run is refused; a finished run is skipped unless ``fresh``; ``fresh`` in a
    folder that holds this config's results or checkpoints is refused (resume=auto / resume=last continue it;
    refusing keeps a finished or half-trained run from being overwritten by accident).
    """
    run_dir = Path(run_dir)
    rank0 = is_rank_zero()
    record = RunRecord(key, t0)
    if rank0:
        check_folder(run_dir, key, cfg)
    done = finished_results(run_dir, key)
    if done is not None and mode != "fresh":
        _say(f"skipped: {run_dir / RESULTS_FILE} already holds this config's results")
        return Prepared(record, skipped={**done, "skipped": True})
    out = Prepared(record)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        out.lock = RunLock.acquire(run_dir)
        if out.lock is None:
            holder = read_json_or_none(run_dir / LOCK_FILE) or {}
            return Prepared(record, skipped={"skipped": True, "locked_by": holder, "run_dir": str(run_dir),
                                             "config_hash": key, "metrics": {"reported": {}}})
        try:
            done = finished_results(run_dir, key)  # the lock's last holder may have finished it meanwhile
            if done is not None:
                if mode != "fresh":
                    out.release()
                    _say(f"skipped: {run_dir / RESULTS_FILE} already holds this config's results")
                    return Prepared(record, skipped={**done, "skipped": True})
                raise ConfigError(f"run folder {run_dir} already holds this config's results; resume=auto skips "
                                  "it, or choose another folder (hydra.run.dir / run_dir) to train it again")
            if mode == "fresh" and _candidates(ckpt_dir):
                raise ConfigError(f"run folder {run_dir} holds an interrupted run of this config "
                                  f"({_candidates(ckpt_dir)[0].name}); resume=last continues it, or choose "
                                  "another folder (hydra.run.dir / run_dir) to start over")
            remove_partial_files(run_dir)
        except BaseException:
            out.release()
            raise
    had_checkpoints = bool(_candidates(ckpt_dir))
    try:
        path, ckpt = (None, None) if mode == "fresh" else choose_checkpoint(ckpt_dir, key, explicit,
                                                                             set_aside=rank0)
        if rank0:
            dropped = trim_metrics(run_dir / METRICS, _resume_step(ckpt))
            if dropped:
                _say(f"{run_dir / METRICS}: {dropped} rows logged after the point this run starts from moved to "
                     "metrics.discarded-*.csv (this run logs those steps again)")
    except BaseException:
        out.release()
        raise
    if ckpt is not None:
        meta = ckpt.get("kasa_run") or {}
        record.wall_before = float(meta.get("wall_time_s", 0.0))
        record.resumes = list(meta.get("resumes", [])) + [{
            "checkpoint": str(path), "epoch": ckpt.get("epoch"), "step": ckpt.get("global_step"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_time_s": record.wall_before}]
        out.checkpoint = str(path)
    elif mode == "resume" and rank0 and not had_checkpoints:
        _say(f"{run_dir} has no checkpoint yet: training this run from the start")
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


# -- metrics.csv on resume ------------------------------------------------------------------------------
def _resume_step(ckpt: dict[str, Any] | None) -> int:
    """The first ``step`` (metrics.csv's column) a run resumed from ``ckpt`` logs: the batches that stepped."""
    if ckpt is None:
        return 0
    loops = (ckpt.get("loops") or {}).get("fit_loop") or {}
    return int((loops.get("epoch_loop.state_dict") or {}).get("_batches_that_stepped", ckpt["global_step"]))


def trim_metrics(path: Path, first_step: int) -> int:
    """Move the rows of ``metrics.csv`` from ``first_step`` on (work after the resumed checkpoint, which the
    resumed run redoes) to ``metrics.discarded-<time>.csv`` beside it; return how many moved."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)

    def step(row: dict[str, str]) -> float:
        try:
            return float(row.get("step") or "-inf")
        except ValueError:
            return float("-inf")

    keep = [r for r in rows if step(r) < first_step]
    drop = [r for r in rows if step(r) >= first_step]
    if not drop:
        return 0
    for target, part in ((path.with_name(f"metrics.discarded-{_stamp()}.csv"), drop), (path, keep)):
        with atomic_file(target, "w") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(part)
    return len(drop)
