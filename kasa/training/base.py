"""The LightningModule every method trains with: task loss + the method's regulariser, one loop for all.

:class:`PeftModule` holds the training step, the method's per-step hooks, the optimiser and the adapter-only
checkpoints; :class:`kasa.tasks.classification.module.ClassificationModule` and
:class:`kasa.training.causal_lm.CausalLMModule` add only their validation. Checkpoints hold only what the
method trains (``method.adapter_state_dict``) plus the metric history, so a 7B run's checkpoint is megabytes,
and resuming rebuilds the frozen base deterministically.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from kasa.methods import PeftMethod
from kasa.runs.files import validation_file
from kasa.training.optim import OptimConfig, build_optimizer


class PeftModule(L.LightningModule):
    """Trains ``model`` (already prepared by ``method.apply``) with ``method``'s regulariser and hooks.

    Subclasses implement validation and append one row of validation metrics per epoch to ``history``
    (``{"epoch", "step", metric: value}``), which :func:`kasa.recipe.run` turns into ``results.json``.
    """

    def __init__(self, model: nn.Module, method: PeftMethod, optim: OptimConfig | None = None):
        super().__init__()
        self.model, self.method = model, method
        self.optim = optim or OptimConfig()
        self.history: list[dict[str, float]] = []
        # what results.json records beside the metrics (generation settings, metric backend, lm_eval scores)
        self.results_extra: dict[str, Any] = {}
        self._last_step_seen = -1
        self._train_forward: Any = None  # compile_model: the compiled model, used by the training step only
        # Checkpoints carry the adapter only; the frozen base is rebuilt by `method.apply` on resume.
        self.strict_loading = False
        self.model.train()  # transformers loads in eval mode; dropout belongs to training

    def evaluation_failure(self) -> str | None:
        """Why validation could not score the model (an LLM judge that stopped answering), else ``None``: the run
        then ends with :class:`~kasa.errors.JudgingFailed` after its last checkpoint, so nothing trained is lost."""
        return None

    # -- training --------------------------------------------------------------------------------
    def validation_file(self, epoch: int | None = None, step: int | None = None) -> str:
        """This validation's file name (:func:`kasa.runs.files.validation_file`): by epoch, or by epoch and step
        when ``trainer.val_check_interval`` validates several times an epoch."""
        interval = getattr(self.trainer, "val_check_interval", 1.0) if self._trainer is not None else 1.0
        several = interval is not None and not (isinstance(interval, float) and interval == 1.0)
        return validation_file(self.current_epoch if epoch is None else epoch,
                               (self.global_step if step is None else step) if several else None)

    def on_train_epoch_start(self) -> None:
        # transformers returns models in eval mode; dropout must be active while training.
        self.model.train()

    def forward(self, **batch: Any) -> Any:
        return self.model(**batch)

    def compile_model(self, backend: str = "inductor", **options: Any) -> None:
        """``trainer.compile``: the training forward goes through ``torch.compile(self.model)``. The compiled
        wrapper is kept off the module tree (no ``_orig_mod.`` keys: checkpoints, the method's hooks and validation's
        ``generate`` see the plain model, whose parameters the wrapper shares)."""
        object.__setattr__(self, "_train_forward", torch.compile(self.model, backend=backend, **options))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.method.on_before_forward(self.model, self.global_step)
        out = (self.model if self._train_forward is None else self._train_forward)(**batch)
        task_loss = self.task_loss(out, batch)
        reg = self.method.regularization_loss(self.model)
        loss = task_loss + reg
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/task_loss", task_loss, batch_size=bs)
        self.log("train/reg_loss", reg, batch_size=bs)
        return loss

    def task_loss(self, out: Any, batch: dict) -> torch.Tensor:
        """The training loss of one batch before the method's regulariser (the model's own loss here)."""
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Only after a real optimiser step (gradient accumulation calls this every micro-batch);
        # gradients are still there: Lightning zeroes them at the start of the next step.
        if self.global_step != self._last_step_seen:
            self._last_step_seen = self.global_step
            total = self.trainer.estimated_stepping_batches if self.trainer else None
            self.method.on_train_step(self.model, self.global_step, int(total) if total else None)

    # -- optimisation ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        from kasa.errors import ConfigError
        from kasa.training.strategy import place_replicated_parameters

        if self._trainer is None or not isinstance(self.trainer.strategy, FSDPStrategy):
            return
        if type(self.method).adapter_state_dict is not PeftMethod.adapter_state_dict:
            raise ConfigError(f"method={self.method.name} under FSDP: its checkpoint holds tensors besides the "
                              "model's (VeRA: the projections' key), which kasa does not gather from FSDP's state "
                              "dict; use trainer=ddp")
        place_replicated_parameters(self.trainer.strategy)  # the adapters FSDP leaves whole, to the device (CUDA)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        from kasa.training.strategy import average_replicated_gradients

        average_replicated_gradients(self.trainer.strategy)  # FSDP: the adapters' gradients, as DDP syncs them

    def configure_optimizers(self):
        return build_optimizer(self.model, self.method.head_parameters(self.model), self.optim,
                               self.trainer.estimated_stepping_batches, self.method.loraplus_b_params)

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = self._adapter_state(checkpoint)
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in sd.items()}
        checkpoint["kasa_history"] = list(self.history)
        checkpoint["kasa_last_step_seen"] = self._last_step_seen

    def _adapter_state(self, checkpoint: dict) -> dict[str, torch.Tensor]:
        """``method.adapter_state_dict``; under FSDP, the same keys taken from the full state dict Lightning gathered
        into ``checkpoint`` (rank 0; ``state_dict_type: full``): the parameters themselves are shards there."""
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp._common_utils import clean_tensor_name

        if not (self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy)):
            return self.method.adapter_state_dict(self.model)
        if not self.trainer.is_global_zero:  # rank0_only: the others hold the replicated tensors only, save nothing
            return {}
        full = checkpoint.get("state_dict") or {}
        # FSDP's and activation checkpointing's wrapper prefixes out of the names the method knows
        keys = sorted({clean_tensor_name(k) for k in self.method.adapter_state_dict_keys(self.model)})
        missing = [k for k in keys if f"model.{k}" not in full]
        if missing:
            raise RuntimeError(f"FSDP's full state dict lacks {len(missing)} adapter tensors, e.g. {missing[0]}")
        return {k: full[f"model.{k}"].detach().clone() for k in keys}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("kasa_history", []))
        self._last_step_seen = checkpoint.get("kasa_last_step_seen", -1)
        if "state_dict" not in checkpoint:  # FSDP: Lightning's loader put the tensors into the sharded model (and
            return                          # popped them); the method's hook cannot load into shards
        sd = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        self.method.load_adapter_state_dict(self.model, sd)
        checkpoint["state_dict"] = {}  # already loaded, through the method's own hook
