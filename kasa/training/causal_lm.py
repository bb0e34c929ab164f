"""Causal-LM fine-tuning with generation-based validation, on the same loop as every other family.

Training examples are ``prompt -> completion`` pairs; the loss covers the completion (and its EOS) only:
prompt tokens are labelled -100. Prompt and completion are tokenised separately and concatenated, so the
tokens the model is trained to continue are exactly the tokens it is given at generation time.

Validation generates a continuation for every evaluation prompt (batched, left padding, the validation
progress bar shows it) and hands the texts to the family's :class:`Evaluator` (E2E metrics, commonsense
answer extraction, an LLM judge). :class:`CausalLMModule` subclasses
:class:`kasa.training.base.PeftModule`, so the optimiser, the method's regulariser and per-step hooks,
adapter-only checkpoints and the ``history`` rows stay one implementation; it adds only the validation step and
the epoch-end scoring.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kasa.errors import DatasetError
from kasa.methods import PeftMethod
from kasa.runs.files import write_jsonl
from kasa.training.base import PeftModule
from kasa.training.optim import OptimConfig
from kasa.training.packing import collate_packed, pack_rows, packed_row
from kasa.training.prefix_cache import generate_with_shared_prefix
from kasa.training.samplers import EpochSampler, LengthGroupedSampler, ShardSampler, TrainLoader

IGNORE_INDEX = -100


@dataclass
class CompletionExample:
    """One supervised pair: the model reads ``prompt`` and is trained to write ``completion``."""

    prompt: str
    completion: str


@dataclass
class EvalItem:
    """One evaluation prompt and what its evaluator needs (references, gold label, task, question ...)."""

    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationSettings:
    """Decoding settings of the validation generation (passed to ``model.generate``)."""

    max_new_tokens: int = 64
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    max_prompt_length: int | None = None  # prompts longer than this keep their END (the response marker)
    early_stopping: bool = True  # beam search stops once num_beams hypotheses end (LLM-Adapters: HF's False)
    # greedy: the batch's common prompt prefix is computed once (kasa.training.prefix_cache); the same tokens up to
    # float round-off, faster where the prompt forward dominates (the CPU). False: plain ``generate``.
    shared_prefix: bool = True

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                              "do_sample": False, "repetition_penalty": self.repetition_penalty}
        if self.num_beams > 1:
            kw["length_penalty"] = self.length_penalty
            kw["early_stopping"] = self.early_stopping
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kw


class Evaluator(Protocol):
    """Scores generations. ``info`` (JSON-able: metric backend, judge identity) goes into results.json;
    :class:`BaseEvaluator` gives the defaults."""

    info: dict[str, Any]
    decode_prompt: bool  # generations arrive as prompt + continuation (LLM-Adapters' response segmentation)
    error: str | None  # set when scoring failed and training should go on (an LLM judge that stopped answering)

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: "CausalLMModule",
                 out_dir: Path | None) -> dict[str, float]: ...


class BaseEvaluator:
    """Defaults of the :class:`Evaluator` protocol that a family's evaluator subclasses."""

    decode_prompt = False
    error: str | None = None

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------------
# tokenisation


def encode_pair(tokenizer, prompt: str, completion: str, max_length: int,
                train_on_inputs: bool = False) -> dict[str, list[int]]:
    """``input_ids``/``labels`` for one pair: prompt (+ BOS if the tokenizer adds one) then completion + EOS.

    Labels are -100 on every prompt token unless ``train_on_inputs``; the sequence is cut at ``max_length``
    from the right (LLM-Adapters' ``cutoff_len``).
    """
    p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (p + c)[:max_length]
    labels = ((p if train_on_inputs else [IGNORE_INDEX] * len(p)) + c)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_prompt(tokenizer, prompt: str, max_prompt_length: int | None = None) -> list[int]:
    """Prompt ids as :func:`encode_pair` makes them; too long -> keep the end (where the answer starts)."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if max_prompt_length and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]
    return ids


def decode_generations(tokenizer, prompt_and_new: Sequence[Sequence[int]] | torch.Tensor,
                       new: Sequence[Sequence[int]] | torch.Tensor, decode_prompt: bool) -> list[str]:
    """The evaluator's strings from generated rows, special tokens (pads included) dropped: prompt + continuation
    when the evaluator says ``decode_prompt`` (it then segments the response itself), else the new tokens only,
    stripped. One rule for the HF and the vLLM paths."""
    if decode_prompt:
        return tokenizer.batch_decode(prompt_and_new, skip_special_tokens=True)
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``: every prompt ends at the last column."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n - len(s):] = 1
    return ids, mask


class _ListDataset(Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class CompletionDataModule(L.LightningDataModule):
    """Training pairs (right-padded, completion-only labels) and evaluation prompts (left-padded, sorted by
    length so a batch wastes little padding; ``idx`` maps generations back to :attr:`eval_items`).

    ``packing``: training rows hold several examples up to ``max_length`` (:mod:`kasa.training.packing`);
    ``group_by_length``: batches of examples of similar length (:class:`~kasa.training.samplers.LengthGroupedSampler`).
    """

    def __init__(self, train: Sequence[CompletionExample], eval_items: Sequence[EvalItem], tokenizer,
                 max_length: int = 256, batch_size: int = 8, eval_batch_size: int = 8, seed: int = 0,
                 train_on_inputs: bool = False, max_prompt_length: int | None = None, num_workers: int = 0,
                 packing: bool = False, group_by_length: bool = False):
        super().__init__()
        if packing and group_by_length:
            raise ValueError("packing and group_by_length exclude each other (packed rows are all about max_length)")
        if not train:
            raise DatasetError("no training examples")
        if not eval_items:
            raise DatasetError("no evaluation prompts")
        self.train_examples, self.eval_items = list(train), list(eval_items)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.train_on_inputs, self.num_workers = train_on_inputs, num_workers
        self.max_prompt_length = max_prompt_length or max_length
        self.n_dropped = 0
        self.packing, self.group_by_length = packing, group_by_length
        self.n_train_examples = 0  # tokenised training examples (packed: spread over fewer rows)
        self._train: _ListDataset | None = None
        self._eval: _ListDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        rows = []
        for ex in self.train_examples:
            enc = encode_pair(self.tokenizer, ex.prompt, ex.completion, self.max_length, self.train_on_inputs)
            # A prompt that fills the whole cutoff leaves nothing to learn (and a NaN loss if a batch is all such).
            if all(t == IGNORE_INDEX for t in enc["labels"]):
                self.n_dropped += 1
                continue
            rows.append(enc)
        if not rows:
            raise DatasetError(f"every training example's prompt fills benchmark.max_length={self.max_length}: "
                               "nothing is left to learn; raise benchmark.max_length")
        if self.n_dropped:
            print(f"[kasa] dropped {self.n_dropped} training examples whose prompt fills max_length={self.max_length}",
                  file=sys.stderr)
        self.n_train_examples = len(rows)
        if self.packing:
            rows = [packed_row([rows[i] for i in group])
                    for group in pack_rows([len(r["input_ids"]) for r in rows], self.max_length)]
        self._train = _ListDataset(rows)
        prompts = [encode_prompt(self.tokenizer, it.prompt, self.max_prompt_length) for it in self.eval_items]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        self._eval = _ListDataset([{"input_ids": prompts[i], "idx": i} for i in order])

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def collate_train(self, batch: list[dict]) -> dict[str, Any]:
        if "position_ids" in batch[0]:
            return collate_packed(batch, self.pad_id)
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate_eval(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_left([b["input_ids"] for b in batch], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "idx": torch.tensor([b["idx"] for b in batch])}

    def train_sampler(self) -> EpochSampler:
        if self.group_by_length:
            return LengthGroupedSampler([len(r["input_ids"]) for r in self._train.rows], self.batch_size, self.seed)
        return EpochSampler(len(self._train), self.seed)

    def train_dataloader(self) -> DataLoader:
        return TrainLoader(self._train, batch_size=self.batch_size, sampler=self.train_sampler(),
                           collate_fn=self.collate_train, num_workers=self.num_workers, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        # ShardSampler: under data parallelism each rank generates for its own share, none twice; the module
        # gathers the shares before scoring.
        return DataLoader(self._eval, batch_size=self.eval_batch_size, sampler=ShardSampler(len(self._eval)),
                          collate_fn=self.collate_eval, num_workers=self.num_workers)


# ---------------------------------------------------------------------------------------------------
# the module


class CausalLMModule(PeftModule):
    """PeftModule for ``prompt -> completion`` training; validation = generation scored by ``evaluator``."""

    def __init__(self, model: nn.Module, method: PeftMethod, tokenizer, evaluator: Evaluator,
                 generation: GenerationSettings | None = None, optim: OptimConfig | None = None,
                 eval_batch_size: int = 8):
        super().__init__(model, method, optim)
        self.tokenizer, self.evaluator = tokenizer, evaluator
        self.generation = generation or GenerationSettings()
        self.eval_batch_size = eval_batch_size
        self.results_extra: dict[str, Any] = {"generation": asdict(self.generation)}
        self._generations: dict[int, str] = {}

    # -- training --------------------------------------------------------------------------------
    def task_loss(self, out: Any, batch: dict) -> torch.Tensor:
        """Next-token cross-entropy, mean over the labelled tokens of the batch; with ``optim.label_smoothing``
        eps it is ``(1 - eps) * nll + eps * mean over the vocabulary of -log p`` (microsoft/LoRA's E2E loss)."""
        eps = self.optim.label_smoothing
        if not eps:
            return out.loss
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(logits.device)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=IGNORE_INDEX, label_smoothing=eps)

    # -- generation ------------------------------------------------------------------------------
    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **overrides: Any) -> list[str]:
        """Decode the continuation of a left-padded batch (new tokens only, special tokens dropped), or prompt +
        continuation when the evaluator says ``decode_prompt`` (it then segments the response itself)."""
        kw = {**self.generation.generate_kwargs(), **overrides}
        # The loader turns the KV cache off for gradient checkpointing; generation needs it back.
        kw.update(use_cache=True, eos_token_id=self.tokenizer.eos_token_id)
        if self.generation.shared_prefix:
            out = generate_with_shared_prefix(self.model, input_ids, attention_mask, self._pad_id, **kw)
        else:
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, pad_token_id=self._pad_id,
                                      **kw)
        return decode_generations(self.tokenizer, out, out[:, input_ids.shape[1]:], self.evaluator.decode_prompt)

    def generate_texts(self, prompts: Sequence[str], batch_size: int | None = None, desc: str | None = None,
                       **overrides: Any) -> list[str]:
        """Generate for raw prompt strings (MT-Bench turns, ad-hoc use), batched like validation; ``desc``
        shows a progress bar over the batches."""
        from tqdm.auto import tqdm

        was_training = self.model.training
        self.model.eval()
        bs = batch_size or self.eval_batch_size
        enc = [encode_prompt(self.tokenizer, p, self.generation.max_prompt_length) for p in prompts]
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
        out: dict[int, str] = {}
        for s in tqdm(range(0, len(order), bs), desc=desc, disable=desc is None, mininterval=5.0):
            chunk = order[s:s + bs]
            ids, mask = pad_left([enc[i] for i in chunk], self._pad_id)
            texts = self.generate_ids(ids.to(self.device), mask.to(self.device), **overrides)
            out.update(zip(chunk, texts))
        self.model.train(was_training)
        return [out[i] for i in range(len(prompts))]

    # -- validation ------------------------------------------------------------------------------
    def evaluation_failure(self) -> str | None:
        return self.evaluator.error if self.evaluator is not None else None

    def on_validation_epoch_start(self) -> None:
        self._generations = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        texts = self.generate_ids(batch["input_ids"], batch["attention_mask"])
        self._generations.update(zip(batch["idx"].tolist(), texts))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._generations:
            self._generations = {}
            return
        items_all = self.trainer.datamodule.eval_items
        generations = self._gather_generations()
        done = sorted(generations)  # limit_val_batches may cover only part of the prompts
        items = [items_all[i] for i in done]
        gens = [generations[i] for i in done]
        out_dir = Path(self.trainer.default_root_dir) if self.trainer.default_root_dir else None
        if out_dir is not None:
            self._write_generations(out_dir / "generations" / self.validation_file(), items, gens)
        # Every rank runs the evaluator on all prompts (an evaluator that generates, like MT-Bench's turns, must
        # run its forwards on every rank under FSDP); rank 0's scores are the ones every rank logs.
        values = {k: float(v) for k, v in self.evaluator(items, gens, self, out_dir).items()}
        if self.trainer.world_size > 1:
            values, info = self.trainer.strategy.broadcast((values, self.evaluator.info), src=0)
            self.evaluator.info = info
        self.results_extra["evaluation"] = self.evaluator.info
        for k, v in values.items():
            self.log(f"val/{k}", v, prog_bar=True)
        self.history.append({"epoch": self.current_epoch, "step": self.global_step, **values})
        self._generations = {}

    def _gather_generations(self) -> dict[int, str]:
        """This rank's ``{eval index: text}`` merged with every other rank's (data parallelism)."""
        import torch.distributed as dist

        if self.trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return dict(self._generations)
        parts: list[dict[int, str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._generations)
        merged: dict[int, str] = {}
        for part in parts:
            merged.update(part or {})
        return merged

    def _write_generations(self, path: Path, items: Sequence[EvalItem], gens: Sequence[str]) -> None:
        if self.trainer.global_rank != 0:
            return
        write_generations(path, items, gens)


def write_generations(path: Path, items: Sequence[EvalItem], gens: Sequence[str]) -> None:
    """``generations/epoch<N>.jsonl``: one row per prompt (prompt, generation, the item's meta)."""
    write_jsonl(path, ({"prompt": it.prompt, "generation": g, **it.meta} for it, g in zip(items, gens)))
