"""What every benchmark family shares: the :class:`Task` interface, the :class:`TaskBundle` a task builds, and the
causal-LM bundle the generation families build around their prompts and evaluator."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kasa.methods import PeftMethod
from kasa.training.causal_lm import (
    CausalLMModule,
    CompletionDataModule,
    CompletionExample,
    EvalItem,
    Evaluator,
    GenerationSettings,
)
from kasa.training.optim import OptimConfig


@dataclass
class TaskBundle:
    model: nn.Module
    datamodule: L.LightningDataModule
    module: L.LightningModule  # exposes `history`: one dict of validation metrics per epoch
    split_sizes: dict[str, int] = field(default_factory=dict)

    def calibration_batches(self) -> Iterator[dict[str, Any]]:
        """Training batches as model inputs (labels dropped), for methods that calibrate (CorDA)."""
        self.datamodule.setup("fit")
        for batch in self.datamodule.train_dataloader():
            yield {k: v for k, v in batch.items() if k != "labels"}


@dataclass
class TaskData:
    """What a run trains and is scored on, without the model: the datamodule, the tokenizer, the split sizes and,
    for classifiers, the label names (``kasa-data preview`` reads it)."""

    datamodule: L.LightningDataModule
    tokenizer: Any
    split_sizes: dict[str, int]
    label_names: list[str] | None = None  # classifiers: the class names ([] regression); generation: None
    max_length: int = 0


Builder = Callable[[DictConfig, PeftMethod], TaskBundle]
"""A benchmark family's builder: data, the backbone with its task head, the datamodule and the LightningModule."""


class Task:
    """One benchmark family (``benchmark.family``): the only code that knows the family's data, prompts and metrics.

    A family is a folder ``kasa/tasks/<name>/`` whose package exports ``TASK``, an instance of a subclass; the
    registry (:func:`kasa.tasks.get_task`) finds it, and nothing outside ``kasa/tasks/`` names a family.
    """

    name: ClassVar[str] = ""
    causal_lm: ClassVar[bool] = True  # the backbone generates text (a causal LM), else an encoder with a head
    peft_task_type: ClassVar[str] = "CAUSAL_LM"  # PEFT's task_type of an exported adapter
    label_smoothing: ClassVar[bool] = True  # whether benchmark.optim.label_smoothing applies to its loss
    default_monitor: ClassVar[str] = ""  # the metric a family-agnostic dataset config monitors (${kasa_monitor:})

    def check(self, cfg: DictConfig) -> None:
        """This family's settings that need no weights and no data (one :class:`~kasa.errors.ConfigError` line)."""

    def data(self, cfg: DictConfig) -> TaskData:
        """The datamodule and tokenizer a run would train on, without loading the model (``kasa-data preview``)."""
        raise NotImplementedError

    def build(self, cfg: DictConfig, method: PeftMethod) -> TaskBundle:
        """Data, the backbone with its task head, the datamodule and the LightningModule, for training or scoring."""
        raise NotImplementedError

    def load_model(self, cfg: DictConfig, state: dict[str, Any]) -> tuple[nn.Module, Any]:
        """``(model, tokenizer)`` of a trained run without its data; ``state``: the checkpoint's tensors (a classifier
        reads its label count off the saved head)."""
        from kasa.models import load_model, load_tokenizer

        m = cfg.model
        model = load_model(m.name_or_path, task="causal_lm", dtype=m.get("dtype"), revision=m.get("revision"),
                           attn_implementation=m.get("attn_implementation"))
        return model, load_tokenizer(m.name_or_path, revision=m.get("revision"))

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def as_dict(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}


Examples = tuple[list[CompletionExample], list[EvalItem], Evaluator, dict[str, int]]
"""A generation family's data: training pairs, evaluation prompts, the evaluator that scores them, split sizes."""


def causal_lm_data(cfg: DictConfig, train: list[CompletionExample], items: list[EvalItem],
                   sizes: dict[str, int]) -> TaskData:
    """Tokenizer and datamodule of a generation family: what a run trains on, without the model."""
    from kasa.models import load_tokenizer

    b, m = cfg.benchmark, cfg.model
    tok = load_tokenizer(m.name_or_path, revision=m.get("revision"))
    gen = GenerationSettings(**as_dict(b.generation))
    dm = CompletionDataModule(train, items, tok, max_length=b.max_length, batch_size=b.batch_size,
                              eval_batch_size=b.eval_batch_size, seed=cfg.seed,
                              train_on_inputs=b.get("train_on_inputs", False), max_prompt_length=gen.max_prompt_length,
                              packing=bool(b.get("packing", False)),
                              group_by_length=bool(b.get("group_by_length", False)))
    return TaskData(dm, tok, sizes, max_length=int(b.max_length))


def causal_lm_bundle(cfg: DictConfig, method: PeftMethod, train: list[CompletionExample], items: list[EvalItem],
                     evaluator: Evaluator, sizes: dict[str, int]) -> TaskBundle:
    """Tokenizer, causal LM, datamodule and module: the part every generation family shares."""
    from kasa.models import load_model

    b, m = cfg.benchmark, cfg.model
    data = causal_lm_data(cfg, train, items, sizes)
    model = load_model(m.name_or_path, task="causal_lm", dtype=m.get("dtype"), revision=m.get("revision"),
                       gradient_checkpointing=m.get("gradient_checkpointing", False),
                       attn_implementation=m.get("attn_implementation"))
    if b.get("packing", False):  # validation checks config.json where it is at hand; here the loaded model
        from kasa.errors import ConfigError
        from kasa.training.packing import packing_refusal

        refusal = packing_refusal(getattr(model.config, "model_type", None), m.get("name", m.name_or_path))
        if refusal:
            raise ConfigError(refusal)
    module = CausalLMModule(model, method, data.tokenizer, evaluator, GenerationSettings(**as_dict(b.generation)),
                            OptimConfig(**as_dict(b.optim)), eval_batch_size=b.eval_batch_size)
    return TaskBundle(model, data.datamodule, module, sizes)


class CausalLMTask(Task):
    """A generation family: it gives its :data:`Examples` (:meth:`examples`); the causal LM, the datamodule and the
    module around them are the same for every such family."""

    def examples(self, cfg: DictConfig) -> Examples:
        """Training pairs, evaluation prompts, the evaluator and the split sizes, read without the model."""
        raise NotImplementedError

    def data(self, cfg: DictConfig) -> TaskData:
        train, items, _, sizes = self.examples(cfg)
        return causal_lm_data(cfg, train, items, sizes)

    def build(self, cfg: DictConfig, method: PeftMethod) -> TaskBundle:
        return causal_lm_bundle(cfg, method, *self.examples(cfg))


def cap(rows: list, n: int | None, seed: int) -> list:
    return rows if n is None or n >= len(rows) else random.Random(seed).sample(rows, n)
