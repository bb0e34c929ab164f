"""Classification and regression (GLUE, BIG-bench tasks): the dev-set metrics and their validation loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torchmetrics
from torch import nn

from kasa.methods import PeftMethod
from kasa.runs.files import write_jsonl
from kasa.tasks.classification import metrics as glue
from kasa.training.base import PeftModule
from kasa.training.optim import OptimConfig

CLASSIFICATION_METRICS = {
    "accuracy": lambda n: torchmetrics.Accuracy(task="multiclass" if n > 2 else "binary", num_classes=n),
    "f1": lambda n: torchmetrics.F1Score(task="multiclass" if n > 2 else "binary", num_classes=n,
                                         average="macro" if n > 2 else "micro"),
    # sklearn's MCC (0 when one class is predicted everywhere); torchmetrics' is not (kasa.tasks.classification.metrics)
    "mcc": lambda n: glue.MatthewsCorrCoef(num_classes=n),
}
REGRESSION_METRICS = {
    "pearson": lambda n: glue.PearsonCorrCoef(),
    "spearman": lambda n: glue.SpearmanCorrCoef(),
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


class ClassificationModule(PeftModule):
    """Sequence classification / regression: the dev sets scored with GLUE-style metrics (torchmetrics states,
    synced across data-parallel ranks).

    ``val_names``: one name per validation dataloader, in order (GLUE MNLI: ``["m", "mm"]``); each loader's
    metrics are logged as ``val/<metric>_<name>`` and all of them go into the same ``history`` row.
    ``None`` (one dev set) keeps the bare ``val/<metric>`` names.

    Dev-set predictions (``save_predictions``): every validation epoch writes
    ``<trainer.default_root_dir>/predictions/epoch<N>.jsonl``, one line per dev example
    ``{"set": <val name>, "idx": <index in that dev set>, "pred": ..., "label": ...}`` gathered from all
    data-parallel ranks; only the best epoch so far (by ``monitor``, first maximum, as results.json's
    ``best_epoch``) and the current one are kept, so a finished run holds its best and last epochs: the two a
    report can read (``benchmark.selection``), without an epoch count's worth of files on a large dev set.
    ``kasa-report`` pairs them across methods for McNemar's test.
    """

    def __init__(self, model: nn.Module, method: PeftMethod, num_labels: int, metrics: list[str],
                 optim: OptimConfig | None = None, val_names: list[str] | None = None, monitor: str | None = None,
                 save_predictions: bool = True):
        super().__init__(model, method, optim)
        self.num_labels = num_labels
        self.val_names = list(val_names) if val_names else [""]
        base = build_metrics(metrics, num_labels)
        # val_metrics: the first (monitored) dev set; extra_val_metrics: the others, one collection each.
        self.val_metrics = base.clone(postfix="_" + self.val_names[0]) if self.val_names[0] else base
        self.extra_val_metrics = nn.ModuleList([base.clone(postfix="_" + n) for n in self.val_names[1:]])
        # Dev-set loss per loader as a torchmetrics mean (sum and count states, summed across DDP ranks):
        # Lightning's own sync_dist mean averages an int batch count across ranks and truncates it.
        self.val_losses = nn.ModuleList([torchmetrics.MeanMetric() for _ in self.val_names])
        self.metric_names = list(metrics)
        self.monitor = monitor or self.metric_keys[0]
        self.save_predictions = save_predictions
        self._predictions: list[tuple[int, int, Any, Any]] = []  # (loader, dev index, prediction, label)
        self._orders: list[list[int] | None] = []  # per loader: the dev indices its sampler yields, in order
        self._seen: list[int] = []                 # per loader: examples this rank scored so far this epoch

    # -- evaluation ------------------------------------------------------------------------------
    @property
    def metric_keys(self) -> list[str]:
        """Every key a validation epoch writes into ``history`` (and logs under ``val/``)."""
        return [metric_key(m, v) for v in self.val_names for m in self.metric_names]

    def on_validation_epoch_start(self) -> None:
        self._predictions = []
        self._orders = [None] * len(self.val_names)
        self._seen = [0] * len(self.val_names)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        labels = batch["labels"]
        out = self.model(**batch)
        logits = out.logits
        preds = logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1)
        metrics = self.val_metrics if dataloader_idx == 0 else self.extra_val_metrics[dataloader_idx - 1]
        metrics.update(preds.float() if self.num_labels == 1 else preds, labels)
        self.val_losses[dataloader_idx].update(out.loss.detach(), weight=labels.shape[0])
        if self.save_predictions and not self.trainer.sanity_checking:
            idx = self._dev_indices(dataloader_idx, labels.shape[0])
            self._predictions += [(dataloader_idx, i, p, y) for i, p, y in
                                  zip(idx, preds.detach().float().cpu().tolist() if self.num_labels == 1
                                      else preds.detach().cpu().tolist(), labels.detach().cpu().tolist())]

    def _dev_indices(self, dataloader_idx: int, n: int) -> list[int]:
        """The dev-set indices of this rank's next ``n`` examples of loader ``dataloader_idx``: the positions its
        sampler yields (:class:`~kasa.training.samplers.ShardSampler` under DDP: ``rank, rank + W, ...``)."""
        if self._orders[dataloader_idx] is None:
            loaders = self.trainer.val_dataloaders
            loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
            sampler = getattr(loader, "sampler", None)
            self._orders[dataloader_idx] = list(sampler) if sampler is not None else list(range(len(loader.dataset)))
        start = self._seen[dataloader_idx]
        self._seen[dataloader_idx] += n
        return self._orders[dataloader_idx][start:start + n]

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
        if self.save_predictions:
            self._write_predictions()

    def _gathered_predictions(self) -> list[tuple[int, int, Any, Any]]:
        import torch.distributed as dist

        if self.trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return list(self._predictions)
        parts: list[list | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._predictions)  # every rank takes part; rank 0 writes
        return [row for part in parts for row in (part or [])]

    def _write_predictions(self) -> None:
        rows = sorted(self._gathered_predictions(), key=lambda r: (r[0], r[1]))
        self._predictions = []
        if self.trainer.global_rank != 0 or not self.trainer.default_root_dir:
            return
        folder = Path(self.trainer.default_root_dir) / "predictions"
        path = folder / self.validation_file()
        write_jsonl(path, ({"set": self.val_names[loader], "idx": i, "pred": p, "label": y}
                           for loader, i, p, y in rows))
        best = max(self.history, key=lambda r: r.get(self.monitor, float("-inf")))
        keep = {self.validation_file(best["epoch"], best["step"]), path.name}
        for old in folder.glob("epoch*.jsonl"):
            if old.name not in keep:
                old.unlink()
