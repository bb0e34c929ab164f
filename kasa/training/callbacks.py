"""Lightning callbacks of the training loop."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class StepSeed(L.Callback):
    """Seeds torch's RNG from ``(seed, epoch, batch)`` before every training batch.

    Dropout draws then depend only on the position in training, not on how much randomness Lightning,
    the dataloader or a resume consumed before: a resumed run takes the same steps as an uninterrupted one.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        torch.manual_seed((self.seed * 1_000_003 + trainer.current_epoch * 100_003 + batch_idx) % (2**63))


class ResumeBatches(L.Callback):
    """A run resumed in the middle of an epoch continues at the next batch of the same order.

    Lightning saves the training loader's state (:class:`kasa.training.samplers.TrainLoader`: the epoch and the
    batches of it already trained) in every checkpoint, but hands it back only to a loader built after the restore;
    kasa's loader is built before it (``configure_optimizers`` asks for ``estimated_stepping_batches``). This hands
    the checkpoint's state to the loader at ``on_train_start``: after the restore, before the first batch is drawn.
    """

    def __init__(self) -> None:
        self._state: dict[str, int] | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        fit = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("state_dict") or {}
        states = fit.get("combined_loader") or []
        self._state = states[0] if len(states) == 1 else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader, state, self._state = trainer.train_dataloader, self._state, None
        if state is not None and callable(getattr(loader, "load_state_dict", None)):
            loader.load_state_dict(state)
