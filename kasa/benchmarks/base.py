"""What every benchmark family shares: the :class:`TaskBundle` a builder returns, and the causal-LM bundle the
generation families (e2e, commonsense, instruction) build around their prompts and evaluator."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..methods import PeftMethod
from ..training.causal_lm import CausalLMModule, CompletionDataModule, CompletionExample, EvalItem, Evaluator, \
    GenerationSettings
from ..training.optim import OptimConfig


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


Builder = Callable[[DictConfig, PeftMethod], TaskBundle]
"""A benchmark family's builder: data, the backbone with its task head, the datamodule and the LightningModule."""


def as_dict(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}


def causal_lm_bundle(cfg: DictConfig, method: PeftMethod, train: list[CompletionExample], items: list[EvalItem],
            evaluator: Evaluator, sizes: dict[str, int]) -> TaskBundle:
    """Tokenizer, causal LM, datamodule and module: the part every generation family shares."""
    from ..models import load_model, load_tokenizer

    b, m = cfg.benchmark, cfg.model
    tok = load_tokenizer(m.name_or_path, revision=m.get("revision"))
    model = load_model(m.name_or_path, task="causal_lm", dtype=m.get("dtype"), revision=m.get("revision"),
                       gradient_checkpointing=m.get("gradient_checkpointing", False),
                       attn_implementation=m.get("attn_implementation"))
    gen = GenerationSettings(**as_dict(b.generation))
    dm = CompletionDataModule(train, items, tok, max_length=b.max_length, batch_size=b.batch_size,
                              eval_batch_size=b.eval_batch_size, seed=cfg.seed,
                              train_on_inputs=b.get("train_on_inputs", False), max_prompt_length=gen.max_prompt_length)
    module = CausalLMModule(model, method, tok, evaluator, gen, OptimConfig(**as_dict(b.optim)),
                            eval_batch_size=b.eval_batch_size)
    return TaskBundle(model, dm, module, sizes)


def cap(rows: list, n: int | None, seed: int) -> list:
    return rows if n is None or n >= len(rows) else random.Random(seed).sample(rows, n)
