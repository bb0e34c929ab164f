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
