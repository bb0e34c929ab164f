"""Training-memory planner: what one training step of a config needs, estimated on the meta device.


    est = estimate_named("llama-2-7b", "kasa", batch=4, seq=512, dtype="bfloat16", quantization="nf4")
    est.total(), est.total(checkpointing=True)          # bytes

    python -m kasa.params --memory --models llama-2-7b llama-3-8b --methods kasa lora --gpu 24

Nothing is downloaded or allocated: the model is built from its shipped config on the ``meta`` device
(:func:`kasa.models.architectures.meta_model`), the method is applied to it (as ``kasa.cli.params`` counts parameters)
and one training forward runs on meta tensors. The table (:func:`plan_table`) measures a 3-block copy of each model
once per method and extends the line to its depth (:func:`estimate_shallow`), and caches what repeats across its
cells: one meta build per model and depth, copied per method, and the output shapes of meta operations
(:class:`_MetaOpCache`); :func:`uncached` turns the caches off. The components, in bytes:

- ``weights``: the frozen parameters in their dtype, or quantised (``nf4``: 4-bit codes, one int8 scale per block
  of 64 and one float32 factor per 256 scales, as torchao's ``to_nf4`` and bitsandbytes' double quantisation;
  ``int8``: one byte per weight and a float32 scale per output row). Quantisation covers the frozen
  ``nn.Linear`` weights (wrapped ones included) except ``lm_head`` and the task heads; embeddings, norms, biases
  and GPT-2's ``Conv1D`` stay in the model dtype. The few hundred bytes of lookup tables per layer are left out.
- ``trainable``, ``grads``: the method's trainable parameters in their own dtype (float32 adapters on a
  half-precision base, :func:`kasa.methods.adapter_dtype`) and one gradient each.
- ``adamw``: two state tensors per trainable parameter in its dtype, plus AdamW's float32 step counter per tensor.
- ``buffers``: what the method adds to the model (KaSA's ``keep_removed`` factors, VeRA's shared matrices, ...).
- ``activations``: MEASURED, not a formula: the tensors autograd saves for backward in one training forward
  (``torch.autograd.graph.saved_tensors_hooks``), the method's regulariser included, parameters and buffers
  excluded, each storage once at its full size (a view counts with its base), as :mod:`kasa.perf.memory`
  counts real tensors. On meta, ``scaled_dot_product_attention`` would take the math path (it saves the
  batch x heads x seq x seq probabilities); the forward runs it through the fused flash kernel's meta function
  instead, which saves what the CPU and CUDA kernels save (q, k, v, output, log-sum-exp), without the padding
  mask of a real batch. Eager attention (DeBERTa) is measured as it is.
- ``activations_ckpt``: MODELLED from the same measurement for gradient checkpointing (one checkpoint per
  transformer block, as ``model.gradient_checkpointing: true``): what is saved outside the blocks (embeddings,
  final norm, head, loss, regulariser) + every block's input hidden state + the saved tensors of one block
  (the largest), which its recomputation re-creates at the backward peak.
- ``transient``: on a quantised base, one dequantised weight (the largest quantised layer, in the model dtype)
  that the backward of a quantised layer materialises.

``total`` sums them: grads counted alongside the activations (the backward frees activations as it writes
gradients, so this is an upper bound of the allocator's peak, which also has kernel workspaces and the CUDA
context, neither modelled). :func:`compare_with_bench` checks every component against what
:func:`kasa.perf.memory.memory_row` counts on the benchmark's real Llama; :func:`cpu_peak_check` compares the
total (with and without checkpointing) with the peak of live tensors in a real CPU step (torch's memory
profiler), :func:`cuda_check` with ``torch.cuda.max_memory_allocated`` where a GPU is at hand.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from kasa.errors import MemoryPlanError  # noqa: F401  (re-exported)
from kasa.models.quantize import NF4_BLOCK_SIZE as NF4_BLOCK
from kasa.models.quantize import NF4_SCALER_BLOCK_SIZE as NF4_SCALER_BLOCK
from kasa.models.quantize import QUANTIZATIONS, quantizable

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
PERF_PREFIX = "perf:"  # perf:tiny, perf:quick, perf:full: the benchmark's Llama (kasa.perf.core.PROFILES)
GIB = 2 ** 30



@dataclass
class MemoryEstimate:
    """Bytes of one training step (see the module docstring for what each component covers)."""

    model: str
    method: str
    dtype: str
    quantization: str | None
    batch: int
    seq: int
    trainable_params: int
    weights: int
    trainable: int
    grads: int
    adamw: int
    buffers: int
    activations: int
    activations_ckpt: int
    transient: int = 0

    def total(self, checkpointing: bool = False) -> int:
        """Weights + trainable + grads + AdamW + buffers + activations (checkpointed or not) + transient."""
        acts = self.activations_ckpt if checkpointing else self.activations
        return self.weights + self.trainable + self.grads + self.adamw + self.buffers + acts + self.transient

    def counted(self) -> dict[str, int]:
        """The components :func:`kasa.perf.memory.memory_row` counts, under its names (it leaves out the frozen
        weights): trainable, grads, adamw, buffers, saved, total."""
        row = {"trainable": self.trainable, "grads": self.grads, "adamw": self.adamw, "buffers": self.buffers,
               "saved": self.activations}
        row["total"] = sum(row.values())
        return row


# ----------------------------------------------------------------------------------------------------------
# bytes of frozen weights

def quantized_bytes(numel: int, out_features: int, scheme: str) -> int:
    """Bytes of one weight of ``numel`` elements and ``out_features`` rows quantised with ``scheme``."""
    if scheme == "nf4":
        blocks = math.ceil(numel / NF4_BLOCK)
        return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NF4_SCALER_BLOCK)
    if scheme == "int8":
        return numel + 4 * out_features
    raise MemoryPlanError(f"quantization={scheme!r} is unknown; choose one of null {' '.join(QUANTIZATIONS)}")


def _excluded_from_quantization(model: nn.Module) -> set[int]:
    """ids of the output embeddings' parameters (a tied ``lm_head`` is the input embedding: never quantised)."""
    emb = getattr(model, "get_output_embeddings", lambda: None)()
    return {id(p) for p in emb.parameters()} if emb is not None else set()


def frozen_weight_bytes(model: nn.Module, method: Any = None, quantization: str | None = None) -> tuple[int, int]:
    """``(bytes, largest dequantised weight)`` of the frozen parameters of ``model`` after ``method`` was applied
    (each parameter once, tied ones too); see the module docstring for what ``quantization`` covers."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise MemoryPlanError(f"quantization={quantization!r} is unknown; choose one of null {' '.join(QUANTIZATIONS)}")
    quantized: dict[int, tuple[nn.Parameter, int]] = {}
    if quantization:
        # the layers kasa.models.quantize.quantize_model quantises (its own rule), frozen ones only
        skip = _excluded_from_quantization(model)
        heads = method.heads(model) if method is not None else []
        for name, module in model.named_modules():
            w = getattr(module, "weight", None)
            if name and quantizable(name, module, heads) and isinstance(w, nn.Parameter) and not w.requires_grad \
                    and id(w) not in skip:
                quantized[id(w)] = (w, module.out_features)
    total, largest, seen = 0, 0, set()
    for p in model.parameters():  # parameters() yields a tied parameter once
        if p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in quantized:
            total += quantized_bytes(p.numel(), quantized[id(p)][1], quantization)
            largest = max(largest, p.numel() * p.element_size())
        else:
            total += p.numel() * p.element_size()
    return total, largest


# ----------------------------------------------------------------------------------------------------------
# activations: one training forward on the meta device

def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # The flash kernel's meta function (the CPU one; its CUDA twin saves the same tensors plus an RNG seed and
    # offset); it takes grouped k/v heads as they are, as the fused kernels do.
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


@contextlib.contextmanager
def _meta_forward() -> Iterator[None]:
    """Fused attention (see :func:`_fused_sdpa`), and no padding warning: it reads token values, which meta
    tensors do not have."""
    from transformers.modeling_utils import PreTrainedModel

    sdpa = torch.nn.functional.scaled_dot_product_attention
    warn = PreTrainedModel.warn_if_padding_and_no_attention_mask
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    PreTrainedModel.warn_if_padding_and_no_attention_mask = lambda self, *a, **k: None
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        PreTrainedModel.warn_if_padding_and_no_attention_mask = warn


# What repeats across methods and models: every cell of the planner's table runs the same aten operations on the
# same shapes (the base model's, block after block and method after method), and on the meta device each one
# costs a Python meta function (torch._refs / decompositions: 0.1-1 ms). An operation's output shapes, strides
# and dtypes follow from its inputs' and its arguments, so they are computed once and replayed.
_OP_OUTPUTS: dict[Any, Any] = {}
_FUNCTIONAL: dict[Any, bool] = {}
_CACHING = [True]  # off inside uncached()


def _functional(func: Any) -> bool:
    """``func`` returns fresh tensors only (no view, no in-place or out= argument, no other return type)."""
    ok = _FUNCTIONAL.get(func)
    if ok is None:
        s = func._schema
        ok = bool(s.returns) and all(a.alias_info is None for a in s.arguments) \
            and all(r.alias_info is None and str(r.type) == "Tensor" for r in s.returns)
        _FUNCTIONAL[func] = ok
    return ok


class _Uncacheable(Exception):
    pass


def _op_key(a: Any) -> Any:
    # a tensor by its metadata; a tensor elsewhere than on meta makes the call uncacheable
    if isinstance(a, torch.Tensor):
        if not a.is_meta:
            raise _Uncacheable
        return a.shape, a.stride(), a.dtype, a.storage_offset()
    if isinstance(a, (list, tuple)):
        return tuple([_op_key(x) for x in a])
    return a


def _storages(a: Any) -> Iterator[int]:
    """The storages of the tensors in ``a`` (nested lists and tuples)."""
    if isinstance(a, torch.Tensor):
        yield _key(a)
    elif isinstance(a, (list, tuple)):
        for x in a:
            yield from _storages(x)


class _MetaOpCache(TorchDispatchMode):
    """Replays the output metadata of functional aten operations on meta tensors (see ``_OP_OUTPUTS``): a hit
    returns new empty meta tensors of the recorded shapes, strides and dtypes, which is all a meta kernel's output
    is. Recorded only where the output is exactly that (a storage of its own, as large as its strides need);
    everything else runs as it is."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _functional(func):
            return func(*args, **kwargs)
        try:
            key = (func, _op_key(args), _op_key(tuple(kwargs.items())), torch.get_default_dtype())
            hit = _OP_OUTPUTS.get(key)
        except (_Uncacheable, TypeError):  # TypeError: an unhashable argument
            return func(*args, **kwargs)
        if hit is not None:
            outs = tuple(torch.empty_strided(shape, stride, dtype=dtype, device="meta") for shape, stride, dtype in hit)
            return outs if len(func._schema.returns) > 1 else outs[0]
        out = func(*args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        seen = set(_storages((args, tuple(kwargs.values()))))  # an output that is an input is not replayed
        for o in outs:
            if not isinstance(o, torch.Tensor) or o.device.type != "meta" or o.storage_offset() or _key(o) in seen \
                    or o.untyped_storage().nbytes() != torch.empty_strided(
                        o.shape, o.stride(), dtype=o.dtype, device="meta").untyped_storage().nbytes():
                return out
            seen.add(_key(o))
        _OP_OUTPUTS[key] = tuple((o.shape, o.stride(), o.dtype) for o in outs)
        return out


def _op_cache() -> contextlib.AbstractContextManager:
    """:class:`_MetaOpCache` (nothing inside :func:`uncached`)."""
    return _MetaOpCache() if _CACHING[0] else contextlib.nullcontext()


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """The planner without its caches (each model built anew, every meta operation run): the reference the
    cached path is tested against."""
    _CACHING[0] = False
    try:
        yield
    finally:
        _CACHING[0] = True


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks gradient checkpointing wraps (transformers' ``GradientCheckpointingLayer``;
    else the longest ``nn.ModuleList`` of one module class)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover (older transformers)
        GradientCheckpointingLayer = ()  # type: ignore[assignment]
    found = [m for m in model.modules() if GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer)]
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
             and len({type(c) for c in m}) == 1]
    return list(max(lists, key=len)) if lists else []


@dataclass
class _Saved:
    total: int  # every saved storage once
    checkpointed: int  # the gradient-checkpointing model (see the module docstring)


def _key(t: torch.Tensor) -> int:
    # A meta tensor has no data pointer, but its storage object is one per allocation, shared by its views.
    return t.untyped_storage()._cdata


Phase = Any  # "pre" (before the first block), a block's index, ("between", i) (after block i), "tail", "reg"


@dataclass
class _Trace:
    """The storages one training forward saved for backward, by where: before the blocks (``pre``), in each
    block (a method may wrap a block: its adapter then runs around the checkpointed block, in the same phase
    but outside ``per_block``), between two blocks, after the last one (``tail``: final norm, head, loss) and in
    the method's regulariser (``reg``)."""

    sizes: dict[int, int]  # storage -> bytes, every saved storage once
    first: dict[int, Phase]  # storage -> the phase that saved it first
    outside: dict[Phase, set[int]]  # storages each phase saved outside the checkpointed blocks
    per_block: list[set[int]]  # storages each checkpointed block saved
    inputs: list[tuple[int, int] | None]  # each checkpointed block's input hidden state: (storage, bytes)
    unit_in: list[int | None]  # each block's (its wrapper's, if any) input hidden state's storage
    unit_out: list[int | None]  # ... and its output's

    def saved(self) -> _Saved:
        """Bytes without and with gradient checkpointing (see the module docstring)."""
        total = sum(self.sizes.values())
        if not self.per_block:
            return _Saved(total, total)
        outside = set().union(*self.outside.values())
        return _Saved(total, self._checkpointed(outside, self.per_block, self.inputs, self.sizes))

    @staticmethod
    def _checkpointed(outside: set[int], per_block: list[set[int]], inputs: list[tuple[int, int] | None],
                      sizes: dict[int, int]) -> int:
        # kept: what is saved outside the checkpointed blocks + every block's input; recomputed: the largest block
        ins = dict(i for i in inputs if i is not None)
        kept = outside | set(ins)
        kept_bytes = sum(sizes.get(k, ins.get(k, 0)) for k in kept)
        return kept_bytes + max(sum(sizes[k] for k in s - kept) for s in per_block)

    def without_last(self, reg_bytes: int) -> _Saved | None:
        """What the same forward saves on the model without its last block, whose regulariser saves ``reg_bytes``
        (measured on it); None where this trace cannot tell (then measure that model). Its blocks run the same
        operations on the same inputs, so they save what they saved here; its tail saves the same tensors, with
        the previous block's output in place of the last one's. This holds when the last two blocks are alike
        (they saved as many bytes), the regulariser saved no tensor of the forward, nothing was saved
        between blocks and the tail saved nothing else of the last block."""
        n = len(self.per_block)
        if n < 3 or any(isinstance(p, tuple) for p in self.outside):
            return None
        last, out, prev = n - 1, self.unit_out[n - 1], self.unit_out[n - 2]
        if out is None or prev is None or self.unit_in[last] != prev:
            return None
        in_unit = [self.per_block[i] | self.outside.get(i, set()) for i in (last - 1, last)]
        reg, tail = self.outside.get("reg", set()), self.outside.get("tail", set())
        if sum(map(self.sizes.get, in_unit[0])) != sum(map(self.sizes.get, in_unit[1])) \
                or any(self.first[k] != "reg" for k in reg) or (tail & in_unit[1]) - {out}:
            return None
        total = sum(s for k, s in self.sizes.items() if self.first[k] not in (last, "reg")) + reg_bytes
        sizes = dict(self.sizes)
        if out in sizes:  # prev is as large as out; its own size where it was saved too
            sizes.setdefault(prev, sizes[out])
        outside = self.outside.get("pre", set()).union(*(self.outside.get(i, set()) for i in range(last)))
        outside |= {prev if k == out else k for k in tail}
        ckpt = self._checkpointed(outside, self.per_block[:last], self.inputs[:last], sizes) + reg_bytes
        return _Saved(total, ckpt)


def _first_tensor(output: Any) -> torch.Tensor | None:
    """A block's output hidden state: the output itself, or the first tensor of its tuple or ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return next((o for o in items if isinstance(o, torch.Tensor)), None)


def _hidden_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    h = next((a for a in args if isinstance(a, torch.Tensor)), kwargs.get("hidden_states"))
    return h if isinstance(h, torch.Tensor) else None


def _trace_saved(model: nn.Module, forward: Callable[[], torch.Tensor],
                 regularizer: Callable[[], torch.Tensor] | None = None,
                 units: Sequence[nn.Module] | None = None) -> _Trace:
    """Run ``forward()`` (then ``regularizer()``, the method's loss term) on the meta-device ``model`` and record
    what autograd saves for backward (see :class:`_Trace`). ``units``: the entries of the model's block list
    (a block, or a method's wrapper around one), default the checkpointed blocks."""
    # parameters (trainable ones too: they are counted as such) and buffers are not activations
    owned = {_key(p) for p in model.parameters()} | {_key(b) for b in model.buffers()}
    blocks = _blocks(model)
    units = list(units) if units is not None else blocks
    n = len(units)
    trace = _Trace({}, {}, {}, [set() for _ in blocks], [None] * len(blocks), [None] * n, [None] * n)
    phase: list[Phase] = ["pre"]
    inside: list[int | None] = [None]  # the checkpointed block running
    keep: list[torch.Tensor] = []  # saved tensors stay alive until the end: no storage is freed and its id reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        k = _key(t)
        if k not in owned:
            if k not in trace.sizes:
                trace.sizes[k] = t.untyped_storage().nbytes()
                trace.first[k] = phase[0]
                keep.append(t)
            if inside[0] is not None:
                trace.per_block[inside[0]].add(k)
            else:
                trace.outside.setdefault(phase[0], set()).add(k)
        return t

    def block_pre(i: int):
        def hook(module, args, kwargs):
            h = _hidden_input(args, kwargs)
            if h is not None:
                trace.inputs[i] = (_key(h), h.untyped_storage().nbytes())
                keep.append(h)
            inside[0] = i
        return hook

    def block_post(module, args, output):
        inside[0] = None

    def unit_pre(i: int):
        def hook(module, args, kwargs):
            h = _hidden_input(args, kwargs)
            if h is not None:
                trace.unit_in[i] = _key(h)
                keep.append(h)
            phase[0] = i
        return hook

    def unit_post(i: int):
        def hook(module, args, output):
            h = _first_tensor(output)
            if h is not None:
                trace.unit_out[i] = _key(h)
                keep.append(h)
            phase[0] = "tail" if i == n - 1 else ("between", i)
        return hook

    handles = []
    for i, unit in enumerate(units):  # registered first: a unit that is its block enters the phase first
        handles.append(unit.register_forward_pre_hook(unit_pre(i), with_kwargs=True))
        handles.append(unit.register_forward_hook(unit_post(i)))
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(block_pre(i), with_kwargs=True))
        handles.append(block.register_forward_hook(block_post))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _meta_forward(), _op_cache():
            loss = forward()
            if regularizer is not None:
                phase[0] = "reg"
                loss = loss + regularizer()
    finally:
        for h in handles:
            h.remove()
    del loss
    return trace


def measure_saved(model: nn.Module, forward: Callable[[], torch.Tensor]) -> _Saved:
    """Bytes autograd saves in ``forward()`` (a closure returning the loss) on the meta-device ``model``, without
    and with gradient checkpointing per block (see the module docstring)."""
    return _trace_saved(model, forward).saved()


def _regularizer_bytes(model: nn.Module, method: Any) -> int:
    """Bytes autograd saves in ``method.regularization_loss(model)`` (parameters and buffers excluded)."""
    return _trace_saved(model, lambda: method.regularization_loss(model)).saved().total


def _buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def _block_list(model: nn.Module) -> nn.ModuleList | None:
    """The ``nn.ModuleList`` that holds exactly the model's blocks (:func:`_blocks`), if one does."""
    blocks = _blocks(model)
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) == len(blocks) and all(a is b for a, b in zip(m, blocks)):
            return m
    return None


@contextlib.contextmanager
def _last_block_removed(blocks: nn.ModuleList) -> Iterator[None]:
    """``blocks`` without its last block inside the context (the block is put back after)."""
    last = blocks[-1]
    del blocks[-1]
    try:
        yield
    finally:
        blocks.append(last)


def _static_parts(model: nn.Module, method: Any, quantization: str | None, base_buffers: int) -> dict[str, int]:
    """The components of :class:`MemoryEstimate` that the applied ``model``'s parameters and buffers give."""
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() * p.element_size() for p in params)
    weights, largest = frozen_weight_bytes(model, method, quantization)
    return dict(trainable_params=sum(p.numel() for p in params), weights=weights, trainable=trainable,
                grads=trainable, adamw=2 * trainable + 4 * len(params),
                buffers=max(0, _buffer_bytes(model) - base_buffers), transient=largest if quantization else 0)


def estimate(model: nn.Module, method: Any, batch: int, seq: int, quantization: str | None = None,
             name: str = "", task: str | None = None) -> MemoryEstimate:
    """Estimate one training step of ``method`` (a built :class:`~kasa.methods.PeftMethod`, not yet applied)
    on the meta-device ``model`` (changed in place: the method is applied to it) for ``batch`` x ``seq`` tokens;
    ``task``: ``causal_lm`` (labels = inputs) or ``seq_cls`` (one label per sequence), ``None``: ``causal_lm``
    for a model with output embeddings."""
    return _estimate(model, method, batch, seq, quantization, name, task)[0]


def _estimate(model: nn.Module, method: Any, batch: int, seq: int, quantization: str | None = None,
              name: str = "", task: str | None = None,
              without_last: bool = False) -> tuple[MemoryEstimate, MemoryEstimate | None]:
    """:func:`estimate`, and with ``without_last`` the estimate of the same model with one block fewer, read from
    the same forward (:meth:`_Trace.without_last`; None where it cannot be read)."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "meta":
        raise MemoryPlanError("estimate() needs a model on the meta device (build it under torch.device('meta'))")
    if batch < 1 or seq < 1:
        raise MemoryPlanError(f"batch={batch} and seq={seq} must be at least 1")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta"):
        limit -= 2  # RoBERTa's positions start after the padding index
    if limit and seq > limit:
        raise MemoryPlanError(f"seq={seq} exceeds {name or type(model).__name__}'s {limit} positions")
    if quantization and getattr(method, "trains_base_weights", False):
        raise MemoryPlanError("fft trains every base weight; a quantised base needs a method that freezes them")
    dtype = first.dtype
    blocks = _block_list(model) if without_last else None
    base_buffers = _buffer_bytes(model)
    if blocks is not None:
        with _last_block_removed(blocks):
            fewer_base_buffers = _buffer_bytes(model)
    with warnings.catch_warnings(), method.counting_only(), _op_cache():  # meta SVDs and the like repeat too
        warnings.simplefilter("ignore")
        method.apply(model)
    model.train()
    static = _static_parts(model, method, quantization, base_buffers)
    if task is None:  # a language-model head (GPT-2's LMHeadModel too) means next-token labels
        task = "causal_lm" if getattr(model, "get_output_embeddings", lambda: None)() is not None else "seq_cls"
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    labels = ids if task == "causal_lm" else torch.zeros(batch, dtype=torch.long, device="meta")
    if not static["trainable_params"]:
        model.enable_input_require_grads()  # as the benchmark's frozen floor: backward to the embeddings

    def forward() -> torch.Tensor:
        method.on_before_forward(model, 0)
        return model(input_ids=ids, labels=labels).loss

    cfg = getattr(model, "config", None)
    guessed = task == "seq_cls" and cfg is not None and getattr(cfg, "problem_type", "") is None
    if guessed:  # DeBERTa's unset problem type selects the labelled rows by value (nonzero): name it instead
        cfg.problem_type = "single_label_classification" if getattr(cfg, "num_labels", 2) > 1 else "regression"
    try:
        trace = _trace_saved(model, forward, lambda: method.regularization_loss(model),
                             units=list(blocks) if blocks is not None else None)
    finally:
        if guessed:
            cfg.problem_type = None
    saved = trace.saved()
    common = dict(model=name, method=method.name, dtype=str(dtype).removeprefix("torch."), quantization=quantization,
                  batch=batch, seq=seq)
    full = MemoryEstimate(**common, **static, activations=saved.total, activations_ckpt=saved.checkpointed)
    if blocks is None:
        return full, None
    with _last_block_removed(blocks):
        fewer = trace.without_last(_regularizer_bytes(model, method))
        if fewer is None:
            return full, None
        static = _static_parts(model, method, quantization, fewer_base_buffers)
    return full, MemoryEstimate(**common, **static, activations=fewer.total, activations_ckpt=fewer.checkpointed)


# ----------------------------------------------------------------------------------------------------------
# named configs: paper models (kasa/models/arch) and the benchmark's Llama (perf:<profile>)

def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"bf16"`` / ... -> torch dtype (``None`` stays ``None``)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise MemoryPlanError(f"dtype={dtype!r} is unknown; choose one of {' '.join(DTYPES)}")
    return DTYPES[dtype]


def model_names() -> list[str]:
    """Every name :func:`estimate_named` takes: the paper models, then ``perf:<profile>``."""
    from kasa.models.architectures import arch_names
    from kasa.perf.core import PROFILES

    return arch_names() + [PERF_PREFIX + p for p in PROFILES]


@functools.cache
def conf_model_defaults(name: str) -> dict[str, Any]:
    """``dtype`` and ``gradient_checkpointing`` of ``conf/model/<name>.yaml`` (empty when there is none)."""
    from omegaconf import OmegaConf

    from kasa.config import CONF_DIR

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        return {}
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    return {k: cfg.get(k) for k in ("dtype", "gradient_checkpointing")}


def default_dtype(name: str) -> torch.dtype:
    """The dtype a run of ``name`` loads (its conf/model yaml; the profile's for ``perf:``; float32 else)."""
    if name.startswith(PERF_PREFIX):
        from kasa.perf.core import PROFILES

        return PROFILES[name.removeprefix(PERF_PREFIX)].dtype
    return parse_dtype(conf_model_defaults(name).get("dtype")) or torch.float32


def _perf_profile(name: str):
    from kasa.perf.core import PROFILES

    key = name.removeprefix(PERF_PREFIX)
    if key not in PROFILES:
        raise MemoryPlanError(f"unknown benchmark profile '{name}'; choose one of "
                              f"{' '.join(PERF_PREFIX + p for p in PROFILES)}")
    return copy.deepcopy(PROFILES[key])


def perf_method(method_name: str, layers: int, r: int = 8):
    """``method_name`` with the benchmark's settings (:func:`kasa.perf.methods._method_kwargs`, dropout 0)."""
    from kasa.methods import REGISTRY, build_method
    from kasa.perf.methods import _method_kwargs

    if method_name not in REGISTRY:
        raise MemoryPlanError(f"unknown method '{method_name}'; registry: {' '.join(sorted(REGISTRY))}")
    kw = _method_kwargs(method_name, r, layers)
    if "dropout" in {f.name for f in dataclasses.fields(REGISTRY[method_name].config_cls)}:
        kw["dropout"] = 0.0
    return build_method(method_name, **kw)


def build_meta(name: str, dtype: torch.dtype | None = None, layers: int | None = None) -> nn.Module:
    """``name`` (a paper model or ``perf:<profile>``, the latter with attention/MLP biases as the benchmark's
    every-method table) on the meta device in ``dtype`` (default: :func:`default_dtype`); ``layers``: a paper
    model with only that many transformer blocks (:func:`estimate_shallow`). Each call returns a fresh copy of
    one cached build (a method applied to it changes only the copy)."""
    dtype = dtype or default_dtype(name)
    return copy.deepcopy(_meta_template(name, dtype, layers)) if _CACHING[0] else _build_meta(name, dtype, layers)


@functools.lru_cache(maxsize=64)
def _meta_template(name: str, dtype: torch.dtype, layers: int | None) -> nn.Module:
    # The default table builds every model once per method; a deepcopy of a meta model costs about half of
    # transformers' from_config (config checks, module init).
    return _build_meta(name, dtype, layers)


def _build_meta(name: str, dtype: torch.dtype, layers: int | None) -> nn.Module:
    if name.startswith(PERF_PREFIX):
        from kasa.perf.core import build_llama

        p = _perf_profile(name)
        p.device, p.dtype = "meta", dtype
        return build_llama(p, bias=True)
    from kasa.models.architectures import arch_names, meta_model

    if name not in arch_names():
        raise MemoryPlanError(f"unknown model '{name}'; choose one of {' '.join(model_names())}")
    return meta_model(name, layers=layers).to(dtype)


def estimate_named(model_name: str, method_name: str, batch: int, seq: int, dtype: str | torch.dtype | None = None,
                   quantization: str | None = None, sets: dict[str, Any] | None = None,
                   layers: int | None = None) -> MemoryEstimate:
    """:func:`estimate` for a paper model (the method's defaults, or a ``conf/method/`` preset, + ``sets``) or for
    ``perf:<profile>`` (the benchmark's Llama and method settings; ``sets`` ignored); ``layers``: a paper model
    cut to that many blocks."""
    return _estimate_named(model_name, method_name, batch, seq, dtype, quantization, sets, layers)[0]


def _estimate_named(model_name: str, method_name: str, batch: int, seq: int, dtype: str | torch.dtype | None = None,
                    quantization: str | None = None, sets: dict[str, Any] | None = None, layers: int | None = None,
                    without_last: bool = False) -> tuple[MemoryEstimate, MemoryEstimate | None]:
    """:func:`estimate_named`, and with ``without_last`` the estimate with one block fewer (see :func:`_estimate`)."""
    model = build_meta(model_name, parse_dtype(dtype), layers=None if model_name.startswith(PERF_PREFIX) else layers)
    if model_name.startswith(PERF_PREFIX):
        method = perf_method(method_name, _perf_profile(model_name).layers)
        task = "causal_lm"
    else:
        from kasa.config.presets import method_kwargs, resolve
        from kasa.methods import build_method
        from kasa.models.architectures import arch_info

        try:
            registered, settings = resolve(method_name)
        except ValueError as exc:
            raise MemoryPlanError(str(exc)) from None
        method = build_method(registered, **{**settings, **method_kwargs(registered, sets or {})})
        task = arch_info(model_name)["task"]
    return _estimate(model, method, batch, seq, quantization, name=model_name, task=task, without_last=without_last)


SHALLOW = (2, 3)  # the block counts estimate_shallow measures (past the blocks a method sets apart)


@functools.cache
def _block_count(model_name: str) -> int | None:
    if model_name.startswith(PERF_PREFIX):
        return None
    from kasa.models.architectures import arch_config, arch_names

    return arch_config(model_name).num_hidden_layers if model_name in arch_names() else None


def _alike_from(method_name: str, sets: dict[str, Any] | None) -> int | None:
    """The block index from which the method treats every block alike: 0 unless its settings name layers;
    AdapterDrop's static ``drop_layers=k``: k (no adapter below block k, one in every block from k). None where
    other settings name layers by index (``layers_to_transform``, AdapterDrop's random drops, whose range
    depends on the depth, ...): :func:`estimate_shallow` then measures the whole model."""
    from kasa.config.presets import resolve

    try:
        registered, settings = resolve(method_name)
    except ValueError:
        return None
    merged = {**settings, **(sets or {})}
    named = {k for k, v in merged.items() if "layers" in k and v not in (None, 0, [], ())}
    if not named:
        return 0
    drop = merged.get("drop_layers")
    if registered == "adapter_d" and named == {"drop_layers"} and merged.get("drop_mode") == "static" \
            and isinstance(drop, int) and not isinstance(drop, bool):
        return drop
    return None


def estimate_shallow(model_name: str, method_name: str, batch: int, seq: int,
                     dtype: str | torch.dtype | None = None, quantization: str | None = None,
                     sets: dict[str, Any] | None = None) -> MemoryEstimate:
    """:func:`estimate_named` in a fraction of its time, with the same numbers: a paper model's blocks are all alike,
    and every component is an affine function of the block count L for L >= 2 (weights, trainable parameters,
    their gradients and AdamW state, the method's buffers and the saved activations grow by one block's worth per
    block; what lies outside the blocks, the largest dequantised weight and the checkpointed model's one
    recomputed block (the largest block past the first) stay). So the model is measured at 2 and 3 blocks (both
    from one forward of 3 blocks, :meth:`_Trace.without_last`) and the line extended to L; a method that sets the
    lowest k blocks apart (:func:`_alike_from`) at k + 2 and k + 3. ``perf:`` models, models too shallow for
    that and layer-indexed settings are measured whole."""
    blocks = _block_count(model_name)
    start = _alike_from(method_name, sets)
    if blocks is None or start is None or blocks <= start + SHALLOW[-1]:
        return estimate_named(model_name, method_name, batch, seq, dtype, quantization, sets)
    lo, hi = (start + n for n in SHALLOW)
    b, a = _estimate_named(model_name, method_name, batch, seq, dtype, quantization, sets, layers=hi,
                           without_last=hi == lo + 1)
    if a is None:  # the forward of hi blocks could not tell the lo-block model's: measure it
        a = estimate_named(model_name, method_name, batch, seq, dtype, quantization, sets, layers=lo)
    steps = blocks - lo
    ints = {f.name: getattr(a, f.name) + steps * (getattr(b, f.name) - getattr(a, f.name))
            for f in dataclasses.fields(MemoryEstimate) if f.name not in ("batch", "seq")
            and isinstance(getattr(a, f.name), int) and not isinstance(getattr(a, f.name), bool)}
    return dataclasses.replace(a, **ints)


# ----------------------------------------------------------------------------------------------------------
# checks against what is counted (CPU) and allocated (CUDA)

COMPONENTS = ("trainable", "grads", "adamw", "buffers", "saved", "total")


def compare_with_bench(profile: str, methods: Sequence[str], r: int = 8) -> list[dict[str, Any]]:
    """For each method: the planner's estimate on ``perf:<profile>`` (meta) against
    :func:`kasa.perf.memory.memory_row` on the same Llama built for real on the CPU, after one training step
    (AdamW's state exists), as the benchmark's every-method table. Rows: ``method``, ``estimate`` and
    ``counted`` (dicts of :data:`COMPONENTS`), ``ratio`` (estimate / counted, 1.0 where both are 0),
    ``weights`` (estimated / real frozen parameter bytes); a method the meta device cannot apply gets ``error``."""
    from kasa.perf.core import build_llama
    from kasa.perf.memory import _buffer_bytes as bench_buffer_bytes
    from kasa.perf.memory import memory_row
    from kasa.perf.methods import _build_method_runner

    p = _perf_profile(PERF_PREFIX + profile)
    p.device = "cpu"  # the counted side runs on the CPU whatever the profile's device
    torch.manual_seed(0)
    base = build_llama(p, bias=True)
    for q in base.parameters():
        q.requires_grad_(False)
    batch = torch.randint(0, p.vocab, (p.batch, p.seq), generator=torch.Generator().manual_seed(1))
    rows = []
    for name in methods:
        try:
            est = estimate_named(PERF_PREFIX + profile, name, p.batch, p.seq, dtype=p.dtype)
        except Exception as exc:  # noqa: BLE001  (e.g. SARA: its ranks need real weights) reported, not dropped
            rows.append({"method": name, "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"})
            continue
        torch.manual_seed(0)
        runner = _build_method_runner(name, base, r, batch, p.layers)
        runner.step(batch)  # AdamW allocates its state on the first step
        counted = memory_row(runner, batch, "cpu", bench_buffer_bytes(base))
        frozen = sum(q.numel() * q.element_size() for q in runner.model.parameters() if not q.requires_grad)
        mine = est.counted()
        ratio = {c: (mine[c] / counted[c] if counted[c] else (1.0 if mine[c] == 0 else math.inf)) for c in COMPONENTS}
        rows.append({"method": name, "estimate": mine, "counted": {c: counted[c] for c in COMPONENTS},
                     "ratio": ratio,
                     "weights": est.weights / frozen if frozen else (1.0 if not est.weights else math.inf)})
    return rows


def _real_training(model_name: str, method_name: str, batch: int, seq: int, dtype: torch.dtype, device: str,
                   checkpointing: bool):
    """``(model, method, optimizer, step)`` for real training steps of the config :func:`estimate_named` plans:
    the model built on ``device`` from its config (random weights: memory does not depend on values), the
    method applied, AdamW; ``step(i)`` runs training step ``i`` (zero_grad, forward + regulariser, backward,
    AdamW)."""
    torch.manual_seed(0)
    if model_name.startswith(PERF_PREFIX):
        from kasa.perf.core import build_llama

        p = _perf_profile(model_name)
        p.device, p.dtype = device, dtype
        model = build_llama(p, bias=True)
        method = perf_method(method_name, p.layers)
        task, vocab = "causal_lm", p.vocab
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from kasa.config.presets import resolve
        from kasa.methods import build_method
        from kasa.models.architectures import arch_config, arch_info

        cfg = arch_config(model_name)
        task = arch_info(model_name)["task"]
        if task == "seq_cls":
            cfg.num_labels = 2
            if getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = getattr(cfg, "eos_token_id", 0) or 0
        auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
        with torch.device(device):
            model = auto.from_config(cfg, dtype=dtype)
        registered, settings = resolve(method_name)
        method = build_method(registered, **settings)
        vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    labels = ids if task == "causal_lm" else torch.zeros(batch, dtype=torch.long, device=device)
    if method.needs_calibration:  # CorDA (KaSA activation_aware): the step's batch, as the bench
        method.apply(model, calibration=[{"input_ids": ids}])
    else:
        method.apply(model)
    model.train()
    if checkpointing:  # as kasa.models.loader.load_model does for model.gradient_checkpointing=true
        from kasa.models.loader import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        method.on_before_forward(model, i)
        loss = model(input_ids=ids, labels=labels).loss + method.regularization_loss(model)
        loss.backward()
        opt.step()

    return model, method, opt, step


def cpu_peak_check(model_name: str, method_name: str, batch: int, seq: int, dtype: str | torch.dtype | None = None,
                   checkpointing: bool = False) -> dict[str, Any]:
    """The planner's total against the peak of the bytes of every live tensor during one real training step on the
    CPU (after a first step, so AdamW's state exists), from torch's memory profiler timeline
    (``torch.profiler.profile(profile_memory=True)``; its ``_memory_profile`` is torch's own, not public, API):
    the CPU's counterpart of ``torch.cuda.max_memory_allocated``. Returns the estimate's total, the peak, the
    bytes alive when the step starts (the estimate's static part: weights, trainable, AdamW, buffers) and the
    ratios."""
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch.profiler._memory_profiler import Action
    except ImportError as exc:  # pragma: no cover (the private module moved)
        raise MemoryPlanError(f"torch's memory profiler timeline is not available here ({exc})") from None
    dt = parse_dtype(dtype) or default_dtype(model_name)
    est = estimate_named(model_name, method_name, batch, seq, dtype=dt)
    model, method, opt, step = _real_training(model_name, method_name, batch, seq, dt, "cpu", checkpointing)
    step(0)
    # step 0's gradients are freed by step 1's zero_grad; whether the profiler records that free (and so counts
    # them as preexisting) varies from run to run, so they go before it starts, as cuda_check does
    opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(1)
    alive = peak = before = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.PREEXISTING:
            before += size
        if action in (Action.PREEXISTING, Action.CREATE):
            alive += size
        elif action == Action.DESTROY:
            alive -= size
        peak = max(peak, alive)
    static = est.weights + est.trainable + est.adamw + est.buffers
    total = est.total(checkpointing)
    return {"model": model_name, "method": method_name, "checkpointing": checkpointing, "estimate_total": total,
            "cpu_peak": peak, "estimate_static": static, "alive_before_step": before, "total_ratio": total / peak,
            "static_ratio": static / before if before else math.nan}


def cuda_check(model_name: str, method_name: str, batch: int, seq: int, dtype: str | torch.dtype | None = None,
               checkpointing: bool = False, steps: int = 2) -> dict[str, Any]:
    """The planner's estimate against ``torch.cuda.max_memory_allocated`` (CUDA only): ``steps`` real training
    steps (:func:`_real_training` on the GPU); the peak is taken over the last step, above nothing (weights,
    AdamW state and all). Returns the estimate's total, the measured peak, the memory allocated before the last
    step (weights + trainable + AdamW + buffers: the estimate's static part) and the two ratios."""
    if not torch.cuda.is_available():
        raise MemoryPlanError("cuda_check needs a CUDA device")
    dt = parse_dtype(dtype) or default_dtype(model_name)
    est = estimate_named(model_name, method_name, batch, seq, dtype=dt)
    torch.cuda.empty_cache()
    model, method, opt, step = _real_training(model_name, method_name, batch, seq, dt, "cuda", checkpointing)
    before = 0
    for i in range(steps):
        if i == steps - 1:
            opt.zero_grad(set_to_none=True)  # step() does it too: what is allocated now is the static part
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        step(i)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    static = est.weights + est.trainable + est.adamw + est.buffers
    total = est.total(checkpointing)
    del model, method, opt, step
    torch.cuda.empty_cache()
    return {"model": model_name, "method": method_name, "dtype": str(dt).removeprefix("torch."), "batch": batch,
            "seq": seq, "checkpointing": checkpointing, "estimate_total": total, "cuda_peak": peak,
            "estimate_static": static, "cuda_before_step": before, "total_ratio": total / peak,
            "static_ratio": static / before if before else math.nan}


# ----------------------------------------------------------------------------------------------------------
# the table of `python -m kasa.params --memory`

def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"



def plan_table(models: Sequence[str], methods: Sequence[str], batch: int | None = None, seq: int | None = None,
               dtype: str | None = None, quantization: str | None = None, checkpointing_only: bool = False,
               gpu_gib: float | None = None, sets: dict[str, Any] | None = None,
               shallow: bool = True) -> tuple[str, list[str]]:
    """``(markdown, notes)``: one table per model, one row per method, sizes in GiB. ``batch``/``seq``
    ``None``: 4 x 512 (a ``perf:`` model: its profile's); ``dtype`` ``None``: each model's conf/model dtype.
    ``gpu_gib``: a "fits" column (``yes``, ``ckpt`` when only the checkpointed total fits, ``no``). ``shallow``:
    each cell from :func:`estimate_shallow` (the same numbers, seconds for the default table), else from
    :func:`estimate_named` on the whole model."""
    from kasa.config.presets import na_footnote

    notes: list[str] = []
    note_ids: dict[tuple[str, str], int] = {}
    out: list[str] = []
    for mod in models:
        p = _perf_profile(mod) if mod.startswith(PERF_PREFIX) else None
        b = batch or (p.batch if p else 4)
        s = seq or (p.seq if p else 512)
        dt = parse_dtype(dtype) or default_dtype(mod)
        ckpt_default = bool(conf_model_defaults(mod).get("gradient_checkpointing")) if not p else False
        out.append(f"### {mod}: {str(dt).removeprefix('torch.')}, batch {b} x seq {s}"
                   f"{', quantization ' + quantization if quantization else ''}"
                   f"{' (conf/model: gradient_checkpointing true)' if ckpt_default else ''}\n")
        cols = ["method", "trainable params", "weights", "trainable + grads + AdamW", "buffers + transient"]
        cols += ["activations (ckpt)", "total (ckpt)"] if checkpointing_only else \
            ["activations", "activations (ckpt)", "total", "total (ckpt)"]
        if gpu_gib:
            cols.append(f"fits {gpu_gib:g} GiB")
        out += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
        for meth in methods:
            try:
                e = (estimate_shallow if shallow else estimate_named)(mod, meth, b, s, dtype=dt,
                                                                      quantization=quantization, sets=sets)
            except Exception as exc:  # noqa: BLE001  (a table cell, not a crash: say why)
                out.append(f"| {meth} | n/a [{na_footnote(notes, note_ids, meth, exc)}] |" + " |" * (len(cols) - 2))
                continue
            cells = [meth, f"{e.trainable_params:,}", _gib(e.weights), _gib(e.trainable + e.grads + e.adamw),
                     _gib(e.buffers + e.transient)]
            cells += [_gib(e.activations_ckpt), _gib(e.total(True))] if checkpointing_only else \
                [_gib(e.activations), _gib(e.activations_ckpt), _gib(e.total()), _gib(e.total(True))]
            if gpu_gib:
                limit = gpu_gib * GIB
                cells.append("yes" if not checkpointing_only and e.total() <= limit else
                             "yes" if checkpointing_only and e.total(True) <= limit else
                             "ckpt" if e.total(True) <= limit else "no")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out), notes


__all__ = ["MemoryEstimate", "MemoryPlanError", "QUANTIZATIONS", "DTYPES", "GIB", "estimate", "estimate_named",
           "measure_saved", "frozen_weight_bytes", "quantized_bytes", "parse_dtype", "model_names", "build_meta",
           "default_dtype", "conf_model_defaults", "perf_method",
           "estimate_shallow", "compare_with_bench", "cpu_peak_check", "cuda_check",
           "plan_table", "COMPONENTS"]
