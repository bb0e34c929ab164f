"""Sequence classification and regression: the packaged sentiment and sarcasm sets (``dataset=vader_*``,
``sarcasm``), GLUE (``dataset=glue_*``) and BIG-bench classification tasks from the user's copy.

Data come from :mod:`.data`'s sources (``vader``, ``sarcasm``, ``glue``, ``bigbench``); the model is the encoder
with a sequence-classification (or one-output regression) head; the dev sets are scored by :mod:`.metrics`'s
metrics inside :class:`.module.ClassificationModule`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from kasa.errors import ConfigError, RunError
from kasa.methods import PeftMethod
from kasa.tasks.base import Task, TaskBundle, TaskData, as_dict


def split_args(cfg: DictConfig) -> dict:
    """``dataset.source_args``, with ``split_seed`` set to the run seed where ``dataset.split_per_seed`` is true.

    A fixed split (the default) gives every seed the same validation set, so seeds only vary the initialisation
    and data order; ``split_per_seed`` also varies which examples are held out (the data's own variance enters the
    seed-to-seed spread). The switch, not the resolved ``split_seed``, stays in the config, so kasa-report still
    pools the seeds of one setting.
    """
    import inspect

    from kasa.errors import DatasetError
    from kasa.tasks.classification.data import SOURCES

    args = as_dict(cfg.dataset.get("source_args"))
    if cfg.dataset.get("split_per_seed", False):
        fn = SOURCES.get(cfg.dataset.source)
        if fn is not None and "split_seed" not in inspect.signature(fn).parameters:
            raise DatasetError(f"dataset.split_per_seed=true: source '{cfg.dataset.source}' has fixed splits (it takes "
                               "no split_seed); set dataset.split_per_seed=false")
        args["split_seed"] = int(cfg.seed)
    return args


def data(cfg: DictConfig) -> TaskData:
    """Splits (checked against the metrics they will be scored with), tokenizer and datamodule, without the model."""
    from kasa.errors import DatasetError
    from kasa.models import load_tokenizer
    from kasa.tasks.classification.data import ClassificationDataModule, load_splits
    from kasa.tasks.classification.module import CLASSIFICATION_METRICS, REGRESSION_METRICS, metric_key

    d, b, m = cfg.dataset, cfg.benchmark, cfg.model
    splits = load_splits(d.source, **split_args(cfg))
    # Several dev sets (MNLI m/mm): metrics are suffixed with each set's name; one: bare names.
    sets = splits.validation_sets
    val_names = list(sets) if len(sets) > 1 or splits.validation_name else None
    table = REGRESSION_METRICS if splits.num_labels == 1 else CLASSIFICATION_METRICS
    unfit = [k for k in d.metrics if k not in table]
    if unfit:  # a float label column is regression: found with the data, before the model loads
        kind = "regression (float labels)" if splits.num_labels == 1 else f"{splits.num_labels} classes"
        raise DatasetError(f"dataset.metrics {list(d.metrics)}: {unfit} do not apply to {kind}; use some of "
                           f"{sorted(table)} (and dataset.monitor one of them)")
    keys = [metric_key(k, v) for v in (val_names or [""]) for k in d.metrics]
    if d.monitor not in keys:  # else ModelCheckpoint fails only after the first training epoch
        raise DatasetError(f"dataset.monitor='{d.monitor}' is not a metric this dataset logs; "
                           f"choose one of {keys}")
    tokenizer = load_tokenizer(m.name_or_path, revision=m.get("revision"))
    dm = ClassificationDataModule(splits, tokenizer, max_length=d.max_length, batch_size=b.batch_size,
                                  eval_batch_size=b.eval_batch_size, seed=cfg.seed)
    sizes = {"train": len(splits.train), "validation": len(splits.validation)}
    sizes.update({metric_key("validation", v): len(ex) for v, ex in sets.items() if v})
    return TaskData(dm, tokenizer, sizes, label_names=list(splits.label_names), max_length=int(d.max_length))


def build(cfg: DictConfig, method: PeftMethod) -> TaskBundle:
    """Sequence classification / regression (GLUE-style): encoder + head, torchmetrics on the dev set."""
    from kasa.models import load_model
    from kasa.tasks.classification.module import ClassificationModule
    from kasa.training.optim import OptimConfig

    d, b, m = cfg.dataset, cfg.benchmark, cfg.model
    td = data(cfg)
    splits = td.datamodule.splits
    sets = splits.validation_sets
    val_names = list(sets) if len(sets) > 1 or splits.validation_name else None
    model = load_model(m.name_or_path, task="seq_cls", num_labels=splits.num_labels, dtype=m.get("dtype"),
                       revision=m.get("revision"), gradient_checkpointing=m.get("gradient_checkpointing", False),
                       attn_implementation=m.get("attn_implementation"))
    module = ClassificationModule(model, method, splits.num_labels, list(d.metrics), OptimConfig(**as_dict(b.optim)),
                                  val_names=val_names, monitor=d.monitor)
    return TaskBundle(model, td.datamodule, module, td.split_sizes)


class ClassificationTask(Task):
    """Sequence classification / regression on an encoder with a task head."""

    name = "classification"
    causal_lm = False
    peft_task_type = "SEQ_CLS"
    label_smoothing = False  # cross-entropy on labels: the optimiser's label_smoothing is for causal LMs
    default_monitor = "accuracy"

    def check(self, cfg: DictConfig) -> None:
        from kasa.tasks.classification.data import SOURCES

        if cfg.dataset.get("source") not in SOURCES:
            raise ConfigError(f"unknown dataset source '{cfg.dataset.get('source')}'; known: {sorted(SOURCES)}")

    def data(self, cfg: DictConfig) -> TaskData:
        return data(cfg)

    def build(self, cfg: DictConfig, method: PeftMethod) -> TaskBundle:
        return build(cfg, method)

    def load_model(self, cfg: DictConfig, state: dict[str, Any]) -> tuple[Any, Any]:
        """The encoder with a head sized from the checkpoint: its label count is read off the saved head."""
        from kasa.methods import HEAD_PRESETS
        from kasa.models import load_model, load_tokenizer

        m = cfg.model
        heads = list(cfg.method.get("modules_to_save") or []) or sorted({h for hs in HEAD_PRESETS.values() for h in hs})
        model = load_model(m.name_or_path, task="seq_cls", num_labels=num_labels(state, heads), dtype=m.get("dtype"),
                           revision=m.get("revision"), attn_implementation=m.get("attn_implementation"))
        return model, load_tokenizer(m.name_or_path, revision=m.get("revision"))


def num_labels(state: dict[str, Any], heads: list[str]) -> int:
    """The classifier's output size, read off the saved head (its last projection has the fewest rows)."""
    from kasa.methods import match_target

    def under_head(key: str) -> bool:
        parts = key.split(".")[:-1]
        return any(match_target(".".join(parts[:i]), heads) for i in range(1, len(parts) + 1))

    outs = [v.shape[0] for k, v in state.items() if k.endswith(".weight") and v.dim() == 2 and under_head(k)]
    if not outs:
        raise RunError(f"the checkpoint holds no task head under {heads}: cannot tell the number of labels")
    return min(outs)


TASK = ClassificationTask()
