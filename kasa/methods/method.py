"""The method half of the contract: :class:`PeftMethod` (apply, regularisation, merge, adapter state dicts) and
the helpers methods share.

A method is a :class:`PeftMethod` subclass registered under a name. Methods that add a low-rank (or any
other) branch to existing layers subclass :class:`~kasa.methods.layer.AdapterLayer`, which keeps the wrapped
``base_layer`` and only has to define its extra parameters, its forward delta and (when mergeable) its delta
weight. What a method is (needs calibration, exports as, is PEFT's, sits where in the paper's tables) is declared
on its class (see :class:`PeftMethod`). The public face (see DESIGN.md, "Contracts") is::

    method = build_method("kasa", r=8, alpha=16, target_modules=["query", "value"])
    model = method.apply(model)               # in place
    loss = task_loss + method.regularization_loss(model)
    method.merge(model); method.unmerge(model)
    sd = method.adapter_state_dict(model); method.load_adapter_state_dict(fresh, sd)

Sharded training (DDP, FSDP, DeepSpeed ZeRO). ``apply`` must see whole weights: the SVD-based inits (KaSA's
truncation, PiSSA, MiLoRA, CorDA, SARA) decompose them and write the residual back. ``kasa.recipe.run`` applies
the method to the plain model before ``trainer.fit``, and Lightning wraps the model (DDP, FSDP units, the
DeepSpeed engine and its ZeRO-3 partitioning) only inside ``fit``, so the decompositions read full tensors and
every process computes the same adapter (DDP also broadcasts rank 0's parameters and buffers when it wraps).
Your own loop: apply the method first, then wrap; for a model already partitioned by ZeRO-3 (loaded under
``deepspeed.zero.Init``) ``apply`` gathers the target weights through :func:`gathered`; an FSDP-wrapped model
must be applied inside ``FSDP.summon_full_params(model, writeback=True)`` (or, better, before wrapping).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

from .config import MethodConfig
from .errors import MethodError
from .layer import AdapterLayer, check_mergeable_base, dequantize_bases
from .targets import match_target, preset_heads, preset_targets, sample_linear_names
from .weights import gathered, get_weight, is_linear_like, quantized_kind


class PeftMethod:
    """Base of every method. Subclasses set ``config_cls`` and override :meth:`wrap` (or :meth:`apply`).

    Layers a method builds take ``autocast_adapter_dtype=self.config.autocast_adapter_dtype`` (the dtype of
    their parameters on a half-precision base, see :class:`~kasa.methods.layer.AdapterLayer`).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # Whether the method wraps target layers (False: FFT, BitFit, ... override apply / select params).
    wraps_targets: ClassVar[bool] = True
    # Whether ``apply`` decomposes the target weights (SVD inits, KaSA's truncation): those must see full-precision
    # weights, so a quantised base is quantised after them (kasa.models.quantize) and refused before them.
    decomposes_weights: ClassVar[bool] = False
    # Whether the method trains the base model's own weights (FFT): impossible on a quantised base.
    trains_base_weights: ClassVar[bool] = False
    # Facts about the method that code outside it reads from the class, never from a name table:
    # whether ``apply`` needs calibration batches (``apply(model, calibration=...)``; KaSA decides per config);
    needs_calibration: ClassVar[bool] = False
    # the ``kasa-export --format`` names it supports (kasa.methods.export.FORMAT_NAMES; () = none);
    export_formats: ClassVar[tuple[str, ...]] = ()
    # HF PEFT's ``peft_type`` of the same adapter (``init_from`` starts from such a folder), None if PEFT has none;
    peft_type: ClassVar[str | None] = None
    # its row in the paper's tables (``methods_in_paper_order``); None sorts after every declared one.
    paper_order: ClassVar[int | None] = None
    # the names of its B-like (up-projection) parameters, the last part of their names, which LoRA+
    # (``benchmark.optim.loraplus_lr_ratio``, kasa.training.optim.loraplus_groups) trains at ``lr * ratio``; () = none.
    loraplus_b_params: ClassVar[tuple[str, ...]] = ()
    # Set only inside :meth:`counting_only`.
    count_only: bool = False

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
                    f"(linear layers include: {sample_linear_names(model)})"
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
            with gathered([w for n in names for w in self.target_weights(model.get_submodule(n))]):
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

    @contextmanager
    def counting_only(self) -> Iterator["PeftMethod"]:
        """Inside, :meth:`apply` only has to create parameters of the right shapes (the parameter table and the
        memory planner apply methods to meta-device models, whose tensors have no values).

        :attr:`count_only` is True inside: a method whose initialisation needs values (calibration data, a
        spectrum-dependent rank, ``.item()``) may skip it, as long as it creates the parameters a real run would.
        Methods that ignore the flag still work wherever their code runs on meta tensors.
        """
        prev, self.count_only = self.count_only, True
        try:
            yield self
        finally:
            self.count_only = prev

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# init_from: start from a PEFT adapter trained elsewhere
def check_init_from(method: "PeftMethod") -> None:
    """``config.init_from``: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) for a
    method PEFT shares; checked from the value alone, before any model loads. The training loop loads it after
    ``apply`` with :func:`kasa.methods.export.load_peft_adapter` (call that yourself in your own loop)."""
    path = getattr(method.config, "init_from", None)
    if path is None:
        return
    if method.peft_type is None:
        # read from the classes, not the registry (which imports this module)
        subclasses, shared_names = [PeftMethod], set()
        while subclasses:
            cls = subclasses.pop()
            subclasses.extend(cls.__subclasses__())
            if cls.name and cls.peft_type is not None:
                shared_names.add(cls.name)
        shared = " ".join(sorted(shared_names))
        raise MethodError(f"{method.name} init_from={path!r}: only the methods PEFT shares start from a PEFT adapter "
                          f"({shared})")
    from pathlib import Path

    folder = Path(str(path)).expanduser()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / f).is_file():
            raise MethodError(f"{method.name} init_from={path!r}: no {f} there (expected a PEFT adapter folder)")


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
    """LoRA's output scaling: ``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else "cpu")


def check_rank(name: str, r: int, out_features: int, in_features: int, what: str = "r") -> None:
    """Refuse (:class:`MethodError`) a rank ``r`` that layer ``name`` of that shape cannot hold."""
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


__all__ = ["PeftMethod", "check_init_from", "check_rank", "count_parameters", "feed_calibration", "lora_scaling",
           "step_randint"]
