"""Shared machinery of every PEFT method: registry, injection, freezing, merge, adapter state dicts.

A method is a :class:`PeftMethod` subclass registered under a name. Methods that add a low-rank (or any
other) branch to existing layers subclass :class:`AdapterLayer`, which keeps the wrapped ``base_layer``
and only has to define its extra parameters, its forward delta and (when mergeable) its delta weight.
The public face (see DESIGN.md, "Contracts") is::

    method = build_method("kasa", r=8, alpha=16, target_modules=["query", "value"])
    model = method.apply(model)               # in place
    loss = task_loss + method.regularization_loss(model)
    method.merge(model); method.unmerge(model)
    sd = method.adapter_state_dict(model); method.load_adapter_state_dict(fresh, sd)

Sharded training (DDP, FSDP, DeepSpeed ZeRO). ``apply`` must see whole weights: the SVD-based inits (KaSA's
truncation, PiSSA, MiLoRA, CorDA, SARA) decompose them and write the residual back. ``kasa.train.run`` applies
the method to the plain model before ``trainer.fit``, and Lightning wraps the model (DDP, FSDP units, the
DeepSpeed engine and its ZeRO-3 partitioning) only inside ``fit``, so the decompositions read full tensors and
every process computes the same adapter (DDP also broadcasts rank 0's parameters and buffers when it wraps).
Your own loop: apply the method first, then wrap; for a model already partitioned by ZeRO-3 (loaded under
``deepspeed.zero.Init``) ``apply`` gathers the target weights through :func:`gathered`; an FSDP-wrapped model
must be applied inside ``FSDP.summon_full_params(model, writeback=True)`` (or, better, before wrapping).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

try:  # GPT-2 stores its projections as Conv1D (weight is in x out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]

REGISTRY: dict[str, type["PeftMethod"]] = {}

# Preset targets per architecture (``model.config.model_type``), as in the papers' setups.
TARGET_PRESETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
}
# Task heads that train with the adapter (new, randomly initialised layers).
HEAD_PRESETS: dict[str, list[str]] = {
    "deberta-v2": ["classifier", "pooler"],
    "default": ["classifier", "score"],
}


class MethodError(ValueError):
    """Bad method configuration: unknown name, impossible shape, target matching nothing, ..."""


def register(name: str):
    """Class decorator adding a :class:`PeftMethod` subclass to the registry under ``name``."""

    def deco(cls: type[PeftMethod]) -> type[PeftMethod]:
        if name in REGISTRY:
            raise MethodError(f"method name '{name}' registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def build_method(name: str, **kwargs: Any) -> "PeftMethod":
    """Instantiate a registered method; unknown names and unknown hyper-parameters raise :class:`MethodError`."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise MethodError(f"unknown method '{name}'; known methods: {' '.join(sorted(REGISTRY))}")
    cfg_cls = cls.config_cls
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise MethodError(f"method '{name}' has no hyper-parameter(s) {unknown}; it takes {sorted(known)}")
    return cls(cfg_cls(**kwargs))


# ----------------------------------------------------------------------------------------------------
# weights of wrapped layers
@contextmanager
def gathered(weights: torch.Tensor | list[torch.Tensor], modifier_rank: int | None = 0) -> Iterator[None]:
    """Inside the block, DeepSpeed ZeRO-3 partitioned parameters (those with a ``ds_id``) hold their full values.

    ``modifier_rank``: the rank whose in-place changes (KaSA's truncation, PiSSA's residual) are kept and
    re-partitioned on exit; every rank computes the same ones. A no-op for ordinary tensors, and without
    DeepSpeed installed (deepspeed is imported only when a partitioned parameter is seen). ``apply`` gathers
    all target weights at once (KaSA batches its SVDs across them): that is the whole targeted part of the
    model on every GPU for the duration of ``apply``.
    """
    ws = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    partitioned = [w for w in ws if hasattr(w, "ds_id")]
    if not partitioned:
        yield
        return
    try:
        import deepspeed
    except ImportError:  # a ds_id without deepspeed: nothing to gather with
        yield
        return
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


# Quantised weights (bitsandbytes layers, torchao tensor subclasses; kasa.models.quantize makes them). Recognised by
# the defining package, so neither package is imported here.
def _weight_kind(w: Any) -> str | None:
    mod = type(w).__module__ or ""
    if mod.startswith("torchao") or mod.startswith("bitsandbytes"):
        return f"{mod.partition('.')[0]} {type(w).__name__}"
    return None


def quantized_kind(module: nn.Module) -> str | None:
    """What quantises ``module``'s weight (``"torchao NF4Tensor"``, ``"bitsandbytes Linear4bit"``, ...), or None."""
    if (type(module).__module__ or "").startswith("bitsandbytes"):
        return f"bitsandbytes {type(module).__name__}"
    w = getattr(module, "weight", None)
    return _weight_kind(w) if isinstance(w, torch.Tensor) else None


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module``'s weight is stored quantised."""
    return quantized_kind(module) is not None


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` weight of a quantised linear layer as a new dense tensor (its compute dtype)."""
    w = module.weight
    kind = quantized_kind(module) or ""
    if kind.startswith("torchao"):
        return w.get_original_weight() if hasattr(w, "get_original_weight") else w.dequantize()  # NF4 | int8
    if kind.startswith("bitsandbytes"):
        import bitsandbytes as bnb

        if getattr(w, "quant_state", None) is not None:  # Params4bit, packed on the GPU
            return bnb.functional.dequantize_4bit(w.data, w.quant_state)
        if getattr(w, "SCB", None) is not None:  # Int8Params, packed: int8 rows times their absmax / 127
            return w.CB.float() * (w.SCB.float()[:, None] / 127.0)
        return w.data.clone()  # not moved to the GPU yet: still the full-precision values
    return w


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if Conv1D and isinstance(module, Conv1D):
        return module.weight.shape[1], module.weight.shape[0]
    raise MethodError(f"cannot wrap layer type {type(module).__name__}: expected nn.Linear or Conv1D")


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an ``(out, in)`` tensor (a transposed view for Conv1D; a dequantised copy for a quantised
    layer, see :func:`quantized_kind`)."""
    if quantized_kind(module) is not None:
        return dequantized_weight(module)
    w = module.weight
    return w.T if (Conv1D and isinstance(module, Conv1D)) else w


@torch.no_grad()
def set_weight(module: nn.Module, w_out_in: torch.Tensor) -> None:
    """Overwrite the weight from an ``(out, in)`` tensor, keeping the layer's dtype, device and layout."""
    kind = quantized_kind(module)
    if kind is not None:
        raise MethodError(f"cannot write into a quantised weight ({kind}): decompose and merge at full precision "
                          "(model.quantization quantises after an SVD-initialised method's residual is written)")
    target = module.weight
    src = w_out_in.T if (Conv1D and isinstance(module, Conv1D)) else w_out_in
    target.copy_(src.to(dtype=target.dtype, device=target.device))


def match_target(name: str, targets: list[str] | str) -> bool:
    """HF PEFT's rule: a string is a full-match regex; a list matches names equal to or ending in '.' + entry."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def model_type(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", "") or ""


def preset_targets(model: nn.Module) -> list[str]:
    mt = model_type(model)
    if mt not in TARGET_PRESETS:
        raise MethodError(
            f"no preset target modules for architecture '{mt or type(model).__name__}'; "
            f"pass target_modules=[...] (presets exist for {sorted(TARGET_PRESETS)})"
        )
    return list(TARGET_PRESETS[mt])


def preset_heads(model: nn.Module) -> list[str]:
    return HEAD_PRESETS.get(model_type(model), HEAD_PRESETS["default"])


# ----------------------------------------------------------------------------------------------------
# dtype of adapter parameters on half-precision bases (HF PEFT's ``autocast_adapter_dtype=True``)
HALF_DTYPES = (torch.float16, torch.bfloat16)
_AUTOCAST_ADAPTER_DTYPE = True


@contextmanager
def adapter_dtype_policy(autocast: bool) -> Iterator[None]:
    """Inside, layers built on a float16/bfloat16 base keep their parameters in float32 (``autocast=True``)
    or in the base's dtype (``False``). :meth:`PeftMethod.apply` enters it with the config's
    ``autocast_adapter_dtype``; layers built outside it get float32 (the default, as HF PEFT)."""
    global _AUTOCAST_ADAPTER_DTYPE
    prev, _AUTOCAST_ADAPTER_DTYPE = _AUTOCAST_ADAPTER_DTYPE, bool(autocast)
    try:
        yield
    finally:
        _AUTOCAST_ADAPTER_DTYPE = prev


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype of adapter parameters on a base of ``base_dtype``: float32 for a half-precision base
    (AdamW's small updates of a bfloat16 ``dsigma`` round to nothing), unless the policy keeps the base dtype."""
    return torch.float32 if (_AUTOCAST_ADAPTER_DTYPE and base_dtype in HALF_DTYPES) else base_dtype


class AdapterLayer(nn.Module):
    """A wrapped linear layer: ``y = base_layer(x) + delta(x)``, with merge/unmerge of ``delta_weight()``.

    Subclasses create their parameters in ``__init__``, in :attr:`adapter_dtype` (float32 on a half-precision
    base, see :func:`adapter_dtype`), and implement :meth:`delta` (casting its input to the adapter dtype) and,
    when mergeable, :meth:`delta_weight` (out x in, float32). The delta is added to the base output in the
    wider of the two dtypes and the sum cast once to the base output's dtype; merging adds ``delta_weight`` to
    the weight in float32 and casts once (as HF PEFT).
    """

    mergeable: ClassVar[bool] = True

    def __init__(self, base_layer: nn.Module, shape: tuple[int, int] | None = None):
        super().__init__()
        self.base_layer = base_layer
        # shape: (out, in) for a base that is not itself a linear layer (an adapter around a whole block)
        self.out_features, self.in_features = shape or layer_shape(base_layer)
        self.merged = False
        self.disabled = False
        w = getattr(base_layer, "weight", None)
        like = w if isinstance(w, torch.Tensor) else next(base_layer.parameters(), None)
        base_dtype = like.dtype if like is not None else torch.get_default_dtype()
        if not base_dtype.is_floating_point:  # packed quantised storage: the dtype its kernels compute in
            base_dtype = getattr(base_layer, "compute_dtype", None) or torch.float32
        self.adapter_dtype = adapter_dtype(base_dtype)

    @property
    def weight(self) -> torch.Tensor:  # lets code that reads `.weight` of a target keep working
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        raise MethodError(f"{type(self).__name__} cannot be merged into the base weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y
        return add_cast(y, self.delta(x))

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        if self.merged:
            return
        if not self.mergeable:
            raise MethodError(f"{type(self).__name__} is not mergeable")
        check_mergeable_base(self)
        w = get_weight(self.base_layer)
        new = w.float() + self.delta_weight().float()
        if safe and not torch.isfinite(new).all():
            raise MethodError("safe merge refused: the merged weight has non-finite values")
        set_weight(self.base_layer, new)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = get_weight(self.base_layer)
        set_weight(self.base_layer, w.float() - self.delta_weight().float())
        self.merged = False


def check_mergeable_base(layer: "AdapterLayer", name: str = "") -> None:
    """A merge writes into the base weight: refused on a quantised one (one line naming the layer)."""
    kind = quantized_kind(layer.base_layer)
    if kind is not None:
        name = name or getattr(layer, "name", "") or type(layer).__name__
        raise MethodError(f"cannot merge '{name}' into its quantised base weight ({kind}): merge(model, "
                          "dequantize=True) replaces each quantised base by its dequantised dense weight first")


@torch.no_grad()
def dense_linear(module: nn.Module) -> nn.Linear:
    """A frozen plain ``nn.Linear`` holding a quantised layer's dequantised weight and its bias (same mode)."""
    w = dequantized_weight(module)
    dense = nn.Linear(w.shape[1], w.shape[0], bias=getattr(module, "bias", None) is not None, device=w.device,
                      dtype=w.dtype)
    dense.weight.copy_(w)
    if dense.bias is not None:
        dense.bias.copy_(module.bias.detach().to(w.dtype))
    dense.requires_grad_(False)
    return dense.train(module.training)


def dequantize_bases(model: nn.Module) -> list[str]:
    """Replace the quantised ``base_layer`` of every adapter by :func:`dense_linear` of it; returns the layers
    replaced (the merge of a QLoRA-style run into a dense model)."""
    done = []
    for lname, layer in model.named_modules():
        if isinstance(layer, AdapterLayer) and is_quantized(layer.base_layer):
            layer.base_layer = dense_linear(layer.base_layer)
            done.append(lname)
    return done


def warn_half_base_parameters(method_name: str, model: nn.Module) -> None:
    """Warn when a method that trains the base's own parameters (FFT, BitFit) trains float16/bfloat16 ones.

    They stay in the base's dtype (they ARE the model; casting them would change its layers' dtypes), so
    updates below half precision's resolution round away; load the model in float32 and train with
    ``trainer.precision=bf16-mixed`` (float32 master weights) instead.
    """
    half = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype in HALF_DTYPES})
    if half:
        warnings.warn(f"{method_name} trains the base model's own {'/'.join(half)} parameters in that dtype: "
                      "small optimiser updates round away; load the model in float32 (model.dtype=null) and "
                      "use trainer.precision=bf16-mixed for float32 master weights", stacklevel=3)


def add_cast(y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``y + delta`` computed in the wider dtype (a float32 adapter output on a bfloat16 base output), cast once
    to ``y``'s dtype, as HF PEFT's LoRA forward."""
    return (y + delta).to(y.dtype)


@dataclass
class MethodConfig:
    """Hyper-parameters every method shares; subclasses add their own fields.

    ``autocast_adapter_dtype`` (HF PEFT's name and default): on a float16/bfloat16 base, the method's own
    parameters are float32, inputs are cast to float32 inside the adapter and merges are computed in float32
    and cast once into the half-precision weight; ``False`` keeps them in the base's dtype. Methods that train
    the base's own parameters (FFT, BitFit) and the task head (``modules_to_save``) keep the base dtype.
    """

    target_modules: list[str] | str | None = None  # None: the architecture's preset
    modules_to_save: list[str] | None = None  # None: the task head preset (classifier/score/...)
    autocast_adapter_dtype: bool = True  # half-precision base: adapter parameters in float32 (False: base dtype)
    init_from: str | None = None  # a PEFT adapter folder to start from (see check_init_from)


@dataclass
class LoraConfigBase(MethodConfig):
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False  # scaling alpha/sqrt(r) instead of alpha/r


class PeftMethod:
    """Base of every method. Subclasses set ``config_cls`` and override :meth:`wrap` (or :meth:`apply`)."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # Whether the method wraps target layers (False: FFT, BitFit, ... override apply / select params).
    wraps_targets: ClassVar[bool] = True
    # Whether ``apply`` decomposes the target weights (SVD inits, KaSA's truncation): those must see full-precision
    # weights, so a quantised base is quantised after them (kasa.models.quantize) and refused before them.
    decomposes_weights: ClassVar[bool] = False
    # Whether the method trains the base model's own weights (FFT): impossible on a quantised base.
    trains_base_weights: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        self.config = config
        self.validate()
        check_init_from(self)

    # -- hooks for subclasses ---------------------------------------------------------------------
    def validate(self) -> None:
        """Check hyper-parameters that need no model (raise :class:`MethodError`)."""

    def wrap(self, name: str, module: nn.Module) -> AdapterLayer:
        raise NotImplementedError

    def regularization_loss(self, model: nn.Module) -> torch.Tensor:
        """The method's auxiliary loss (a scalar tensor; zero for methods with none)."""
        return _zero(model)

    def on_train_step(self, model: nn.Module, step: int, total_steps: int | None = None) -> None:
        """Called by the training loop after each optimiser step (AdaLoRA rank allocation, ...)."""

    def on_before_forward(self, model: nn.Module, step: int) -> None:
        """Called by the training loop before each training forward (DyLoRA rank sampling, ...)."""

    # -- the public API ---------------------------------------------------------------------------
    def targets(self, model: nn.Module) -> list[str] | str:
        return self.config.target_modules if self.config.target_modules is not None else preset_targets(model)

    def heads(self, model: nn.Module) -> list[str]:
        return self.config.modules_to_save if self.config.modules_to_save is not None else preset_heads(model)

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze ``model``, wrap the target layers in place, unfreeze the head; returns ``model``."""
        if any(isinstance(m, AdapterLayer) for m in model.modules()):
            raise MethodError("model already has adapters applied; build a fresh model for another method")
        for p in model.parameters():
            p.requires_grad_(False)
        if self.wraps_targets:
            targets = self.targets(model)
            names = [n for n, _ in model.named_modules() if n and match_target(n, targets)]
            if not names:
                raise MethodError(
                    f"target_modules={targets!r} match no module of {type(model).__name__} "
                    f"(linear layers include: {_sample_linear_names(model)})"
                )
            for n in names:
                module = model.get_submodule(n)
                if not self.accepts(n, module):
                    raise MethodError(
                        f"method '{self.name}' cannot wrap '{n}' of type {type(module).__name__}; "
                        "it wraps nn.Linear and Conv1D layers"
                    )
                kind = quantized_kind(module) if self.decomposes_weights else None
                if kind is not None:  # an SVD of packed quantised values means nothing
                    raise MethodError(
                        f"method '{self.name}' decomposes the weight of '{n}', which is already quantised ({kind}); "
                        "load the base in full precision and set model.quantization, which quantises the residual "
                        "after the decomposition"
                    )
            # Every weight read (SVDs in before_wrap and in the layers' init) and residual write happens in here.
            with gathered([w for n in names for w in self.target_weights(model.get_submodule(n))]), \
                    adapter_dtype_policy(self.config.autocast_adapter_dtype):
                self.before_wrap(model, names)
                for n in names:
                    parent_name, _, child = n.rpartition(".")
                    parent = model.get_submodule(parent_name) if parent_name else model
                    target = model.get_submodule(n)
                    # a fresh nn.Module is in training mode: keep the model's mode (no adapter dropout in eval)
                    setattr(parent, child, self.wrap(n, target).train(target.training))
        self.mark_trainable(model)
        return model

    def before_wrap(self, model: nn.Module, names: list[str]) -> None:
        """Hook run once with every target name before wrapping (batched SVDs, calibration, ...)."""

    def accepts(self, name: str, module: nn.Module) -> bool:
        """Hook: whether this method can wrap ``module`` (linear layers; adapters also take output blocks)."""
        return is_linear_like(module)

    def target_weights(self, module: nn.Module) -> list[torch.Tensor]:
        """Hook: the weights a wrap reads or writes (gathered together under DeepSpeed ZeRO-3)."""
        return [module.weight]

    def mark_trainable(self, model: nn.Module) -> None:
        """Unfreeze the adapter parameters and the task head."""
        for layer in self.adapter_layers(model):
            for pname, p in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    p.requires_grad_(True)
        for p in self.head_parameters(model):
            p.requires_grad_(True)

    def head_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters of the task-head modules (:meth:`heads`), each once."""
        heads = self.heads(model)
        found: dict[int, nn.Parameter] = {}
        for n, m in model.named_modules():
            if n and match_target(n, heads) and not isinstance(m, AdapterLayer):
                found.update((id(p), p) for p in m.parameters())
        return list(found.values())

    def adapter_layers(self, model: nn.Module) -> Iterator[AdapterLayer]:
        return (m for m in model.modules() if isinstance(m, AdapterLayer))

    def merge(self, model: nn.Module, safe: bool = False, dequantize: bool = False) -> nn.Module:
        """Fold every adapter into its base weight (``safe``: refuse non-finite results, change nothing).

        A quantised base refuses (one line) unless ``dequantize``: each quantised base layer is then replaced by
        a dense one holding its dequantised weight, and the adapter merged into that (irreversible for the base).
        """
        layers = list(self.adapter_layers(model))
        if dequantize:
            for layer in layers:
                if not layer.mergeable:
                    raise MethodError(f"method '{self.name}' is not mergeable ({type(layer).__name__})")
            dequantize_bases(model)
        else:
            for lname, layer in model.named_modules():
                if isinstance(layer, AdapterLayer) and layer.mergeable and not layer.merged:
                    check_mergeable_base(layer, lname)
        if safe:
            # Check everything before touching anything, so a refusal leaves the model as it was.
            for layer in layers:
                if not layer.mergeable:
                    raise MethodError(f"method '{self.name}' is not mergeable ({type(layer).__name__})")
                if not layer.merged:
                    new = get_weight(layer.base_layer).float() + layer.delta_weight().float()
                    if not torch.isfinite(new).all():
                        raise MethodError("safe merge refused: a merged weight has non-finite values")
        for layer in layers:
            layer.merge()
        return model

    def unmerge(self, model: nn.Module) -> nn.Module:
        for layer in self.adapter_layers(model):
            layer.unmerge()
        return model

    def merge_and_unload(self, model: nn.Module, safe: bool = True, dequantize: bool = False) -> nn.Module:
        """Merge, then put every wrapped layer's ``base_layer`` back in its place: a plain model with the
        base architecture and no wrapper calls, so merged inference runs at the base model's speed.
        Irreversible (adapter parameters are dropped); non-mergeable methods raise :class:`MethodError`;
        ``dequantize``: see :meth:`merge`."""
        self.merge(model, safe=safe, dequantize=dequantize)
        names = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
        for n in names:
            parent_name, _, child = n.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, model.get_submodule(n).base_layer)
        return model

    def set_adapter_enabled(self, model: nn.Module, enabled: bool) -> None:
        for layer in self.adapter_layers(model):
            layer.disabled = not enabled

    def extra_state_keys(self, model: nn.Module) -> list[str]:
        """Non-trainable tensors the adapter needs besides its trainable ones (e.g. KaSA's removed part)."""
        keys = []
        for lname, layer in model.named_modules():
            if isinstance(layer, AdapterLayer):
                for bname, _ in layer.named_buffers(recurse=False):
                    if bname not in layer._non_persistent_buffers_set:  # derived state is not saved
                        keys.append(f"{lname}.{bname}")
        return keys

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Trainable parameters (adapter + head) and the adapter's buffers, detached and cloned."""
        sd = model.state_dict()
        keys = {n for n, p in model.named_parameters() if p.requires_grad}
        keys.update(self.extra_state_keys(model))
        return {k: sd[k].detach().clone() for k in sorted(keys) if k in sd}

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """Load what :meth:`adapter_state_dict` saved into a model that :meth:`apply` prepared."""
        expected = set(self.adapter_state_dict_keys(model))
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - set(model.state_dict()))
        if missing or unexpected:
            raise MethodError(
                f"adapter state dict does not fit this model: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
        merged = [layer for layer in self.adapter_layers(model) if layer.merged]
        for layer in merged:
            layer.unmerge()
        self.before_load(model, state_dict)
        model.load_state_dict(state_dict, strict=False)
        for layer in merged:
            layer.merge()
        return model

    def adapter_state_dict_keys(self, model: nn.Module) -> list[str]:
        keys = {n for n, p in model.named_parameters() if p.requires_grad}
        keys.update(self.extra_state_keys(model))
        return sorted(keys)

    def before_load(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """Hook: adjust base weights before adapter tensors are loaded (KaSA re-truncation)."""

    def trainable_parameter_count(self, model: nn.Module, include_heads: bool = False) -> int:
        """Trainable parameters of the method, without the task head unless ``include_heads``
        (the paper's convention: RoBERTa-base KaSA r=8 on query/value has 295,104)."""
        head_params = set() if include_heads else {id(p) for p in self.head_parameters(model)}
        return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head_params)

    def final_parameter_count(self, model: nn.Module) -> int | None:
        """Trainable parameters at the end of training where the method changes them (AdaLoRA's final budget,
        the count papers report); ``None`` (every other method): :meth:`trainable_parameter_count` holds."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# ----------------------------------------------------------------------------------------------------
# init_from: start from a PEFT adapter trained elsewhere
# Methods whose adapters HF PEFT also has (the same tensors on the same layers).
PEFT_IMPORTABLE = ("lora", "dora", "kasa", "pissa", "adalora", "vera")


def check_init_from(method: "PeftMethod") -> None:
    """``config.init_from``: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) for a
    method PEFT shares; checked from the value alone, before any model loads. The training loop loads it after
    ``apply`` with :func:`kasa.methods.export.load_peft_adapter` (call that yourself in your own loop)."""
    path = getattr(method.config, "init_from", None)
    if path is None:
        return
    if method.name not in PEFT_IMPORTABLE:
        raise MethodError(f"{method.name} init_from={path!r}: only the methods PEFT shares start from a PEFT adapter "
                          f"({' '.join(PEFT_IMPORTABLE)})")
    from pathlib import Path

    folder = Path(str(path)).expanduser()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / f).is_file():
            raise MethodError(f"{method.name} init_from={path!r}: no {f} there (expected a PEFT adapter folder)")


# ----------------------------------------------------------------------------------------------------
# count-only mode: the parameter table (`python -m kasa.params`) applies methods to meta-device models
_COUNT_ONLY = False


@contextmanager
def count_only() -> Iterator[None]:
    """Methods are applied only to count parameters (on meta-device models, tensors have no values).

    Inside, :func:`is_count_only` is True: a method whose initialisation needs values (calibration data,
    a spectrum-dependent rank, ``.item()``) may skip it, as long as it creates parameters of the shapes a
    real run would. Methods that ignore the flag still work wherever their code runs on meta tensors.
    """
    global _COUNT_ONLY
    prev, _COUNT_ONLY = _COUNT_ONLY, True
    try:
        yield
    finally:
        _COUNT_ONLY = prev


def is_count_only() -> bool:
    """Whether methods are being applied only to count parameters (see :func:`count_only`)."""
    return _COUNT_ONLY


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def step_randint(seed: int, step: int, low: int, high: int) -> int:
    """An integer uniform on ``low..high`` (inclusive) for training step ``step``: a pure function of
    ``(seed, step)`` (a generator seeded with ``seed * 1_000_003 + step``), so reruns and resumed runs draw
    the same values whatever happened before (DyLoRA's rank, AdapterDrop's dropped blocks)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + int(step))
    return int(torch.randint(low, high + 1, (1,), generator=g))


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else "cpu")


def _sample_linear_names(model: nn.Module, k: int = 6) -> str:
    names = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if n and is_linear_like(m)})
    return ", ".join(names[:k * 2]) or "none"


def check_rank(name: str, r: int, out_features: int, in_features: int, what: str = "r") -> None:
    if r < 1:
        raise MethodError(f"{what}={r} must be at least 1")
    k = min(out_features, in_features)
    if r >= k:
        raise MethodError(
            f"{what}={r} is impossible for '{name}' ({out_features}x{in_features}): it must be < min(out, in) = {k}"
        )


def feed_calibration(model: nn.Module, batches: Iterable[Any], max_samples: int | None, handles: list[Any],
                     mask_box: list[Any]) -> None:
    """Run ``model`` in eval mode over calibration batches (dicts, tuples or tensors) until ``max_samples``
    sequences were seen, with ``mask_box[0]`` set to each dict batch's ``attention_mask`` for the forward hooks
    in ``handles``; the hooks are removed and the training mode restored afterwards (also on errors)."""
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            if max_samples is not None and seen >= max_samples:
                break
            mask_box[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            if isinstance(batch, dict):
                model(**batch)
                first = next(iter(batch.values()))
            elif isinstance(batch, (tuple, list)):
                model(*batch)
                first = batch[0]
            else:
                model(batch)
                first = batch
            seen += first.shape[0] if isinstance(first, torch.Tensor) and first.dim() >= 2 else 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


__all__ = [
    "REGISTRY", "TARGET_PRESETS", "AdapterLayer", "MethodConfig", "LoraConfigBase", "MethodError",
    "PeftMethod", "build_method", "register", "count_parameters", "get_weight", "set_weight",
    "layer_shape", "match_target", "lora_scaling", "check_rank", "field", "count_only", "is_count_only",
    "gathered", "adapter_dtype", "adapter_dtype_policy", "add_cast", "HALF_DTYPES", "step_randint",
    "PEFT_IMPORTABLE", "check_init_from", "quantized_kind", "is_quantized", "dequantized_weight", "dequantize_bases",
]
