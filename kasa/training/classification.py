"""The LightningModule every method trains with: task loss + the method's regulariser, one loop for all.

Checkpoints hold only what the method trains (``method.adapter_state_dict``) plus the metric history,
so a 7B run's checkpoint is megabytes, and resuming rebuilds the frozen base deterministically.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn

from ..methods.base import PeftMethod
from .optim import OptimConfig, build_optimizer

CLASSIFICATION_METRICS = {
    "accuracy": lambda n: torchmetrics.Accuracy(task="multiclass" if n > 2 else "binary", num_classes=n),
    "f1": lambda n: torchmetrics.F1Score(task="multiclass" if n > 2 else "binary", num_classes=n,
                                         average="macro" if n > 2 else "micro"),
    "mcc": lambda n: torchmetrics.MatthewsCorrCoef(task="multiclass" if n > 2 else "binary", num_classes=n),
}
REGRESSION_METRICS = {
    "pearson": lambda n: torchmetrics.PearsonCorrCoef(),
    "spearman": lambda n: torchmetrics.SpearmanCorrCoef(),
}


def build_metrics(names: list[str], num_labels: int) -> torchmetrics.MetricCollection:
    table = REGRESSION_METRICS if num_labels == 1 else CLASSIFICATION_METRICS
    unknown = [n for n in names if n not in table]
    if unknown:
        kind = "regression" if num_labels == 1 else "classification"
        raise ValueError(f"unknown {kind} metric(s) {unknown}; known: {sorted(table)}")
    return torchmetrics.MetricCollection({n: table[n](num_labels) for n in names})


def metric_key(name: str, val_name: str = "") -> str:
    """The logged / history key of metric ``name`` on the dev set ``val_name`` ("" keeps the bare name)."""
    return f"{name}_{val_name}" if val_name else name


class PeftModule(L.LightningModule):
    """Trains ``model`` (already prepared by ``method.apply``) on a classification/regression task.

    ``val_names``: one name per validation dataloader, in order (GLUE MNLI: ``["m", "mm"]``); each loader's
    metrics are logged as ``val/<metric>_<name>`` and all of them go into the same ``history`` row.
    ``None`` (one dev set) keeps the bare ``val/<metric>`` names.
    """

    def __init__(self, model: nn.Module, method: PeftMethod, num_labels: int, metrics: list[str],
                 optim: OptimConfig | None = None, val_names: list[str] | None = None):
        super().__init__()
        self.model, self.method = model, method
        self.num_labels = num_labels
        self.optim = optim or OptimConfig()
        self.val_names = list(val_names) if val_names else [""]
        base = build_metrics(metrics, num_labels)
        # val_metrics: the first (monitored) dev set; extra_val_metrics: the others, one collection each.
        self.val_metrics = base.clone(postfix="_" + self.val_names[0]) if self.val_names[0] else base
        self.extra_val_metrics = nn.ModuleList([base.clone(postfix="_" + n) for n in self.val_names[1:]])
        # Dev-set loss per loader as a torchmetrics mean (sum and count states, summed across DDP ranks):
        # Lightning's own sync_dist mean averages an int batch count across ranks and truncates it.
        self.val_losses = nn.ModuleList([torchmetrics.MeanMetric() for _ in self.val_names])
        self.metric_names = list(metrics)
        self.history: list[dict[str, float]] = []
        self._last_step_seen = -1
        # Checkpoints carry the adapter only; the frozen base is rebuilt by `method.apply` on resume.
        self.strict_loading = False
        self.model.train()  # transformers loads in eval mode; dropout belongs to training

    # -- training --------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # transformers returns models in eval mode; dropout must be active while training.
        self.model.train()

    def forward(self, **batch: Any) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.method.on_before_forward(self.model, self.global_step)
        out = self.model(**batch)
        task_loss = out.loss
        reg = self.method.regularization_loss(self.model)
        loss = task_loss + reg
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/task_loss", task_loss, batch_size=bs)
        self.log("train/reg_loss", reg, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Only after a real optimiser step (gradient accumulation calls this every micro-batch);
        # gradients are still there: Lightning zeroes them at the start of the next step.
        if self.global_step != self._last_step_seen:
            self._last_step_seen = self.global_step
            total = self.trainer.estimated_stepping_batches if self.trainer else None
            self.method.on_train_step(self.model, self.global_step, int(total) if total else None)

    # -- evaluation ------------------------------------------------------------------------------
    @property
    def metric_keys(self) -> list[str]:
        """Every key a validation epoch writes into ``history`` (and logs under ``val/``)."""
        return [metric_key(m, v) for v in self.val_names for m in self.metric_names]

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        labels = batch["labels"]
        out = self.model(**batch)
        logits = out.logits
        preds = logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1)
        metrics = self.val_metrics if dataloader_idx == 0 else self.extra_val_metrics[dataloader_idx - 1]
        metrics.update(preds.float() if self.num_labels == 1 else preds, labels)
        self.val_losses[dataloader_idx].update(out.loss.detach(), weight=labels.shape[0])

    def on_validation_epoch_end(self) -> None:
        values: dict[str, float] = {}
        for metrics in (self.val_metrics, *self.extra_val_metrics):
            values.update({k: float(v) for k, v in metrics.compute().items()})
            metrics.reset()
        # Our own suffix instead of Lightning's "/dataloader_idx_N", so keys match the metric names.
        losses = {f"val/{metric_key('loss', name)}": float(m.compute())
                  for name, m in zip(self.val_names, self.val_losses) if m.update_count}
        for m in self.val_losses:
            m.reset()
        if self.trainer.sanity_checking:
            return
        for k, v in losses.items():
            self.log(k, v, sync_dist=True, reduce_fx="max")  # already synced, as the metrics below
        for k, v in values.items():
            # torchmetrics already synced the states across ranks, so every rank holds the same value: the max
            # over ranks returns it exactly (and tells Lightning it is a cross-device value).
            self.log(f"val/{k}", v, prog_bar=True, sync_dist=True, reduce_fx="max")
        self.history.append({"epoch": self.current_epoch, "step": self.global_step, **values})

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        return build_optimizer(self.model, self.method.head_parameters(self.model), self.optim,
                               self.trainer.estimated_stepping_batches)

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = self.method.adapter_state_dict(self.model)
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in sd.items()}
        checkpoint["kasa_history"] = list(self.history)
        checkpoint["kasa_last_step_seen"] = self._last_step_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("kasa_history", []))
        self._last_step_seen = checkpoint.get("kasa_last_step_seen", -1)
        sd = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        self.method.load_adapter_state_dict(self.model, sd)
        checkpoint["state_dict"] = {}  # already loaded, through the method's own hook
