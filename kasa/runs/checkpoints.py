"""Checkpoints of a run folder: written atomically, checked against the run's config hash before a resume trusts
them, moved aside when corrupt, found again by kind (``best`` / ``last``) for kasa-eval and kasa-export."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig

from kasa.errors import CheckpointCorrupt, ConfigError, RunError
from kasa.runs.files import atomic_file

CHECKPOINT_DIR = "checkpoints"


def _say(msg: str) -> None:
    print(f"[kasa] {msg}", flush=True)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint (last.ckpt, best-*.ckpt, ``trainer.save_checkpoint``) to a temporary file in the
    same folder, fsyncs it and renames it into place: a full disk or a kill never leaves a half-written file
    under a checkpoint's name. (Lightning's own writer stages the file in the system temp folder and moves it,
    which is a copy, not a rename, whenever that folder is on another filesystem.) Loads with
    ``weights_only=True``: kasa's checkpoints hold tensors, numbers, strings and containers only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote filesystems: Lightning's fsspec transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


def step_checkpoint(ckpt_dir: Path, every_n_train_steps: int):
    """``checkpoint.every_n_train_steps``: a Lightning ``ModelCheckpoint`` that also writes ``last.ckpt`` (through
    :class:`AtomicCheckpointIO`, as every checkpoint) after every N-th optimiser step, so a resume loses at most N
    steps (:class:`kasa.training.samplers.TrainLoader` continues the epoch at the next batch).

    It skips the steps after which validation runs: the run's per-validation ``last.ckpt`` is written after that
    validation, with its history row; a checkpoint between the step and its validation would resume past a
    validation that never ran.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepCheckpoint(ModelCheckpoint):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loop, fetcher = trainer.fit_loop.epoch_loop, trainer.fit_loop._data_fetcher
            if loop.batch_progress.is_last_batch or (fetcher is not None and loop._should_check_val_fx(fetcher)):
                return  # validation (or the epoch's end) follows: the per-epoch/validation last.ckpt is written then
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    return StepCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1, monitor=None,
                          every_n_train_steps=int(every_n_train_steps), enable_version_counter=False)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, ``weights_only`` and memory-mapped (cheap to check before ``fit`` loads it).

    Raises :class:`CheckpointCorrupt` with the reason when the file is not a loadable checkpoint.
    """
    import pickle

    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointCorrupt("empty file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            # loads, but holds objects that a weights-only load refuses: not corrupt, not ours to set aside
            raise ConfigError(f"checkpoint {path} holds objects beyond tensors and plain containers "
                              f"({' '.join(str(exc).split())[:160]}); kasa loads checkpoints with weights_only=True")
        raise CheckpointCorrupt(f"UnpicklingError: {' '.join(str(exc).split())[:160]}") from None
    except Exception as exc:  # noqa: BLE001 -- truncation surfaces as EOFError, RuntimeError, OSError, ...
        raise CheckpointCorrupt(f"{type(exc).__name__}: {' '.join(str(exc).split())[:160] or 'no message'}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise CheckpointCorrupt("not a Lightning checkpoint (no state_dict / global_step)")
    return ckpt


def _candidates(ckpt_dir: Path) -> list[Path]:
    """last.ckpt, then the best-epoch checkpoints, latest epoch first."""
    def epoch(p: Path) -> int:
        digits = "".join(c for c in p.stem.rsplit("=", 1)[-1] if c.isdigit())
        return int(digits) if digits else -1

    last = [ckpt_dir / "last.ckpt"] if (ckpt_dir / "last.ckpt").is_file() else []
    return last + sorted(ckpt_dir.glob("best-*.ckpt"), key=epoch, reverse=True)


def _check_owner(path: Path, ckpt: dict[str, Any], key: str) -> None:
    meta = ckpt.get("kasa_run")
    if meta is None:
        _say(f"{path} predates config hashes in checkpoints: not checked against this run's config")
    elif meta.get("config_hash") != key:
        raise ConfigError(f"checkpoint {path} belongs to another config (config_hash {meta.get('config_hash')}, "
                          f"this run's is {key}); resume the run that wrote it, or remove it")


def choose_checkpoint(ckpt_dir: Path, key: str, explicit: Path | None = None,
                      set_aside: bool = True) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its contents, or (None, None) to start fresh.

    ``explicit`` (a .ckpt the user named) must load and belong to this config. Otherwise last.ckpt, then the
    best-epoch checkpoints (latest first): one that does not load is named in one line and renamed to
    ``<name>.corrupt-<time>`` (``set_aside``; only rank 0 renames); one of another config is refused.
    The best-epoch checkpoint is a full training state like last.ckpt (same callbacks, same save point), so
    resuming from it redoes the later epochs and ends as an uninterrupted run would.
    """
    if explicit is not None:
        try:
            ckpt = load_checkpoint(explicit)
        except CheckpointCorrupt as exc:
            raise ConfigError(f"resume checkpoint {explicit} does not load ({exc})") from None
        _check_owner(explicit, ckpt, key)
        return explicit, ckpt
    corrupt = []
    for path in _candidates(ckpt_dir):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointCorrupt as exc:
            aside = path.with_name(f"{path.name}.corrupt-{_stamp()}")
            if set_aside:
                os.replace(path, aside)
            _say(f"checkpoint {path} does not load ({exc}); moved to {aside.name}"
                 if set_aside else f"checkpoint {path} does not load ({exc}); skipped")
            corrupt.append(path)
            continue
        _check_owner(path, ckpt, key)
        if corrupt:
            _say(f"resuming from the older checkpoint {path} (epoch {ckpt.get('epoch')}, step "
                 f"{ckpt.get('global_step')}) instead")
        return path, ckpt
    if corrupt:
        _say(f"no loadable checkpoint left in {ckpt_dir}: training this run from the start")
    return None, None


CHECKPOINT_KINDS = ("best", "last")  # what --checkpoint / kasa-eval / kasa-export accept


def find_checkpoint(run_dir: str | Path, which: str) -> Path:
    """``checkpoints/last.ckpt`` or the best epoch's ``checkpoints/best-*.ckpt`` (the newest, if several)."""
    if which not in CHECKPOINT_KINDS:
        raise RunError(f"checkpoint='{which}' is unknown; choose one of {list(CHECKPOINT_KINDS)}")
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    found = [ckpt_dir / "last.ckpt"] if which == "last" else list(ckpt_dir.glob("best-*.ckpt"))
    found = [p for p in found if p.is_file()]
    if not found:
        raise RunError(f"{ckpt_dir}: no {which} checkpoint ({'last.ckpt' if which == 'last' else 'best-*.ckpt'})")
    return max(found, key=lambda p: p.stat().st_mtime)


def default_checkpoint(cfg: DictConfig) -> str:
    """The checkpoint a run's reported metrics come from: ``benchmark.selection`` (best unless ``last``)."""
    return "last" if (cfg.get("benchmark") or {}).get("selection") == "last" else "best"


def adapter_state(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The adapter + head tensors of a Lightning checkpoint (kasa saves them under ``model.``)."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise RunError(f"{path}: no state_dict (not a kasa checkpoint)")
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
