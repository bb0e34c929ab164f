"""Serial bottleneck adapters: Adapter-H, Adapter-P, Adapter-L and AdapterDrop behind one layer class.

Every variant wraps an *output projection* of a transformer block (the attention output projection and/or
the FFN output projection) so that, with ``y = base_layer(x)``::

    out = y + f(norm(y) W_down + b_down) W_up + b_up        (norm: identity, or Adapter-L's own LayerNorm)

The adapter therefore sits after the projection and before the block's residual sum (+ LayerNorm in
post-LN models), as in Houlsby et al. (2019), Fig. 2. The up-projection starts at zero, so every variant
is the identity at initialisation (the model's output equals the base model's). Adapters are serial and
nonlinear: they cannot be folded into a weight, and ``merge`` raises :class:`MethodError`.

Variants (registry name: paper; what differs):

- ``adapter_h``: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP". Two adapters per
  block (after the attention output projection and after the FFN output projection); the paper also
  trains the model's layer-normalisation parameters (``train_layer_norm=True``). Defaults from the
  reference code (google-research/adapter-bert): bottleneck 64, GELU.
- ``adapter_p``: Pfeiffer et al. 2021, "AdapterFusion". One adapter per block after the FFN, reduction
  factor 16 (bottleneck = hidden / 16), ReLU, in AdapterHub's PfeifferConfig arrangement (``original_ln``,
  ``residual_before_ln``): on post-LN (BERT/RoBERTa/DeBERTa) blocks :class:`OutputBlockAdapterLayer` wraps
  the FFN output block, the adapter reads ``LN(h + x)``, keeps ``h`` as its skip and the block re-applies
  ``LN(. + x)``; on pre-LN (GPT-2/Llama) blocks, where AdapterHub passes no LayerNorm, that arrangement is
  ``H + up(f(down(H)))`` on the block's output ``H = x + ffn`` (:class:`BlockAdapterLayer` without a norm).
  ``original_ln=false``: the bottleneck on the dropped FFN output, inside the residual sum.
- ``adapter_l``: Lin et al. 2020, "Exploring Versatile Generative Language Model via Parameter-Efficient
  Transfer Learning": ``Adapter(H) = ReLU(LN(H) W_E) W_D + H``, one adapter with its OWN LayerNorm on the
  output ``H`` of each transformer block (``placement=block``, :class:`BlockAdapterLayer`; the LoRA paper's
  GPT-2 baseline describes it as "after the MLP module and after a LayerNorm"). ``placement=ffn`` puts it
  on the dropped FFN output instead, inside the residual sum, as Adapter-P.
- ``adapter_d``: Rücklé et al. 2021, "AdapterDrop". Pfeiffer- (default) or Houlsby-style adapters.
  ``drop_mode=static`` (default; the paper's "specialised" AdapterDrop): no adapters in the lowest
  ``drop_layers`` blocks (default 5: the paper's setting that keeps task performance while speeding up a
  12-layer model). ``drop_mode=random`` (the paper's "robust" AdapterDrop, AdapterHub's
  ``Adapter_Drop_Training`` notebook): adapters in every block; each training step skips those of the
  lowest ``n`` blocks, ``n ~ Uniform{0, ..., max_drop}`` (``None``: blocks - 2, the notebook's
  ``randint(0, 11)`` on 12 layers), drawn reproducibly from ``(seed, step)``; outside training the lowest
  ``eval_drop_layers`` (default 0) are skipped.

Initialisation: ``adapter_h`` follows adapter-bert's ``feedforward_adapter`` (``init_scale=1e-3``: both
projections truncated-normal with std 1e-3 cut at 2 std, biases zero: near, not exactly, the identity);
the other variants (and ``init_scale=null``) keep ``nn.Linear``'s default down-projection and a zero
up-projection, an exact identity at step 0.

Dropout: with a placement preset the block's dropout after the projection (BERT/RoBERTa/DeBERTa
``*.output.dropout``, GPT-2 ``attn.resid_dropout`` / ``mlp.dropout``) moves into the adapter layer and is
replaced by ``nn.Identity`` in the block, so the adapter sees the dropped output as adapter-bert and
AdapterHub apply it: ``Adapter(dropout(Project(h)))``. Llama-style blocks have no such dropout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import MethodConfig
from .errors import MethodError
from .layer import AdapterLayer, add_cast
from .method import PeftMethod, step_randint
from .registry import register
from .targets import match_target, model_type
from .weights import is_linear_like, layer_shape

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu, "tanh": torch.tanh}

# Per architecture (``config.model_type``): full-match regexes of the attention output projection and of
# the FFN output projection of each block. Names match HF transformers' module trees.
_BERT_LIKE = (r".*\.layer\.\d+\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense")
_LLAMA_LIKE = (r".*\.layers\.\d+\.self_attn\.o_proj", r".*\.layers\.\d+\.mlp\.down_proj")
PLACEMENT_PRESETS: dict[str, tuple[str, str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "deberta-v2": _BERT_LIKE,
    "deberta": _BERT_LIKE,
    "gpt2": (r".*\.h\.\d+\.attn\.c_proj", r".*\.h\.\d+\.mlp\.c_proj"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}
# The block's dropout that follows each output projection (a sibling of it), per architecture: with a
# placement preset it moves into the adapter layer, so the adapter sees the dropped output as the reference
# implementations apply it (adapter-bert: ``Adapter(dropout(Project(h)))``; AdapterHub the same). Llama-style
# blocks have no dropout module after o_proj / down_proj.
_BERT_DROPOUT = ("dropout", "dropout")
POST_DROPOUT: dict[str, tuple[str, str]] = {
    "bert": _BERT_DROPOUT, "roberta": _BERT_DROPOUT, "xlm-roberta": _BERT_DROPOUT, "deberta-v2": _BERT_DROPOUT,
    "deberta": _BERT_DROPOUT, "gpt2": ("resid_dropout", "dropout"),
}
# Post-LN output blocks ``LN(dropout(dense(x)) + residual)`` (modules with ``dense``, ``dropout``,
# ``LayerNorm``) that AdapterHub's Pfeiffer arrangement wraps as a whole, per architecture.
OUTPUT_BLOCK_PRESETS: dict[str, str] = {mt: r".*\.layer\.\d+\.output" for mt in
                                        ("bert", "roberta", "xlm-roberta", "deberta-v2", "deberta")}


# Whole transformer blocks (Adapter-L's placement: Lin et al. put the adapter on each block's output).
BLOCK_PRESETS: dict[str, str] = {
    **{mt: r".*\.encoder\.layer\.\d+" for mt in ("bert", "roberta", "xlm-roberta", "deberta-v2", "deberta")},
    "gpt2": r".*\.h\.\d+",
    **{mt: r".*\.layers\.\d+" for mt in ("llama", "mistral", "gemma", "qwen2")},
}


def is_output_block(module: nn.Module) -> bool:
    """A post-LN output block: a linear ``dense``, a ``dropout`` and a ``LayerNorm`` (BERT-style *Output)."""
    return (isinstance(getattr(module, "dense", None), nn.Linear) and isinstance(getattr(module, "LayerNorm", None),
                                                                                 nn.Module)
            and isinstance(getattr(module, "dropout", None), nn.Module))


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")


def layer_index(module_name: str) -> int | None:
    """The transformer block index in a module name (``...layer.3.output.dense`` -> 3), or None."""
    m = _LAYER_INDEX.search(module_name)
    return int(m.group(1)) if m else None


def placement_patterns(model: nn.Module, where: tuple[str, ...]) -> list[str]:
    """Regexes of the module names to wrap; ``where`` holds ``"attn"`` and/or ``"ffn"``."""
    mt = model_type(model)
    if mt not in PLACEMENT_PRESETS:
        raise MethodError(
            f"no adapter placement preset for architecture '{mt or type(model).__name__}'; pass "
            f"target_modules=[...] naming the output projections (presets exist for {sorted(PLACEMENT_PRESETS)})"
        )
    attn, ffn = PLACEMENT_PRESETS[mt]
    return [p for key, p in (("attn", attn), ("ffn", ffn)) if key in where]


class BottleneckAdapterLayer(AdapterLayer):
    """``h = dropout(base_layer(x)); h + up(f(down(norm(h))))``; ``dropout`` is the block's own dropout after
    the projection, moved in here (identity when the architecture has none)."""

    mergeable = False
    # AdapterDrop's random form skips an adapter for one training step (train_skip) or outside training
    # (eval_skip); the block's own computation still runs
    train_skip: bool = False
    eval_skip: bool = False
    block_index: int | None = None

    def __init__(self, base_layer: nn.Module, bottleneck: int, activation: str = "relu",
                 layer_norm: bool = False, name: str = "", init_scale: float | None = None,
                 block_dropout: nn.Module | None = None, shape: tuple[int, int] | None = None, *,
                 autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, shape, autocast_adapter_dtype=autocast_adapter_dtype)
        self.block_dropout = block_dropout
        if bottleneck < 1:
            raise MethodError(f"adapter bottleneck={bottleneck} must be at least 1 (layer '{name}')")
        d = self.out_features
        kw = {"device": self._like().device, "dtype": self.adapter_dtype}
        self.bottleneck = bottleneck
        self.activation = activation
        self.adapter_norm = nn.LayerNorm(d, **kw) if layer_norm else None
        self.adapter_down = nn.Linear(d, bottleneck, **kw)
        self.adapter_up = nn.Linear(bottleneck, d, **kw)
        nn.init.zeros_(self.adapter_up.bias)
        if init_scale is None:  # exact identity at step 0
            nn.init.zeros_(self.adapter_up.weight)
        else:  # adapter-bert: both projections truncated-normal(0, init_scale) at +-2 std, biases zero
            for lin in (self.adapter_down, self.adapter_up):
                nn.init.trunc_normal_(lin.weight, std=init_scale, a=-2 * init_scale, b=2 * init_scale)
                nn.init.zeros_(lin.bias)

    def adapter(self, y: torch.Tensor) -> torch.Tensor:
        """The bottleneck branch alone (without the residual)."""
        h = y.to(self.adapter_down.weight.dtype)
        if self.adapter_norm is not None:
            h = self.adapter_norm(h)
        return self.adapter_up(ACTIVATIONS[self.activation](self.adapter_down(h)))

    def skipped(self) -> bool:
        """Whether this forward bypasses the adapter (disabled, or dropped by AdapterDrop)."""
        return self.disabled or (self.train_skip if self.training else self.eval_skip)

    def _like(self) -> torch.Tensor:
        """A base tensor whose device the adapter takes (its dtype: :attr:`adapter_dtype`)."""
        return self.weight

    def _projected(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return self.block_dropout(y) if self.block_dropout is not None else y

    def delta(self, x: torch.Tensor) -> torch.Tensor:  # the branch depends on y, not x: see forward
        return self.adapter(self._projected(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._projected(x)
        if self.skipped():
            return y
        return add_cast(y, self.adapter(y))

    def extra_repr(self) -> str:
        return f"bottleneck={self.bottleneck}, activation={self.activation}, own_norm={self.adapter_norm is not None}"


class OutputBlockAdapterLayer(BottleneckAdapterLayer):
    """AdapterHub's Pfeiffer arrangement around a post-LN output block ``LN(dropout(dense(x)) + r)``.

    With ``h = dropout(dense(x))``: ``out = LN(h + up(f(down(LN(h + r)))) + r)``, i.e. AdapterHub's
    ``original_ln_before`` (the adapter reads the block's normalised output), ``residual_before_ln`` (its
    skip connection is ``h``) and ``original_ln_after`` (the block's LayerNorm with the residual again).
    The block's dense, dropout and LayerNorm are its own, frozen; with the up-projection at zero this is
    the block itself.
    """

    def __init__(self, block: nn.Module, bottleneck: int, activation: str = "relu", name: str = "",
                 init_scale: float | None = None, *, autocast_adapter_dtype: bool = True):
        super().__init__(block, bottleneck, activation, layer_norm=False, name=name, init_scale=init_scale,
                         shape=layer_shape(block.dense), autocast_adapter_dtype=autocast_adapter_dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.dense.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.dense.bias

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise MethodError("an output-block adapter needs the block's residual input: call the layer itself")

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        h = b.dropout(b.dense(hidden_states))
        if self.skipped():
            return b.LayerNorm(h + input_tensor)
        a = add_cast(h, self.adapter(b.LayerNorm(h + input_tensor)))
        return b.LayerNorm(a + input_tensor)


class BlockAdapterLayer(BottleneckAdapterLayer):
    """An adapter on a whole transformer block's output (Lin et al. 2020): ``H = block(...)``,
    ``out = H + up(f(down(norm(H))))``; the block's call, arguments and other outputs pass through unchanged.
    Attributes the model reads from its blocks (``attention_type`` and the like) are forwarded to the block."""

    def __init__(self, block: nn.Module, hidden: int, bottleneck: int, activation: str = "relu",
                 layer_norm: bool = True, name: str = "", init_scale: float | None = None, *,
                 autocast_adapter_dtype: bool = True):
        super().__init__(block, bottleneck, activation, layer_norm=layer_norm, name=name, init_scale=init_scale,
                         shape=(hidden, hidden), autocast_adapter_dtype=autocast_adapter_dtype)

    def _like(self) -> torch.Tensor:
        return next(self.base_layer.parameters())

    @property
    def weight(self) -> torch.Tensor:
        raise AttributeError("a block adapter wraps a whole transformer block, which has no single weight")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base_layer"], name)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise MethodError("a block adapter needs the block's own arguments: call the layer itself")

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if self.skipped():
            return out
        h = out[0] if isinstance(out, tuple) else out
        h = add_cast(h, self.adapter(h))
        return (h, *out[1:]) if isinstance(out, tuple) else h


@dataclass
class AdapterConfig(MethodConfig):
    """Shared hyper-parameters; ``target_modules`` (None: the architecture's placement preset)."""

    bottleneck: int | None = 64  # None: hidden size // reduction_factor
    reduction_factor: float = 16.0  # used only when bottleneck is None
    activation: str = "gelu"  # gelu | relu | swish | silu | tanh
    train_layer_norm: bool = False  # also train the model's own LayerNorm/RMSNorm parameters (Houlsby)
    init_scale: float | None = None  # None: up-projection zero (exact identity); s: both ~ truncnormal(0, s)
    # FFN-only adapters on post-LN (BERT-style) blocks: AdapterHub's Pfeiffer LayerNorm arrangement
    # (OutputBlockAdapterLayer); false, or other architectures: the bottleneck on the dropped FFN output
    original_ln: bool = False


@dataclass
class HoulsbyConfig(AdapterConfig):
    bottleneck: int | None = 64
    activation: str = "gelu"
    train_layer_norm: bool = True
    init_scale: float | None = 1e-3  # adapter-bert's feedforward_adapter default


@dataclass
class PfeifferConfig(AdapterConfig):
    bottleneck: int | None = None
    reduction_factor: float = 16.0
    activation: str = "relu"
    original_ln: bool = True  # AdapterHub's PfeifferConfig: original_ln_before / original_ln_after


@dataclass
class LinConfig(AdapterConfig):
    bottleneck: int | None = 64
    activation: str = "relu"
    placement: str = "block"  # block (Lin et al.: on each transformer block's output) | ffn (the FFN output)


@dataclass
class AdapterDropConfig(AdapterConfig):
    bottleneck: int | None = None
    reduction_factor: float = 16.0
    activation: str = "relu"
    style: str = "pfeiffer"  # pfeiffer (FFN output only) | houlsby (attention and FFN outputs)
    original_ln: bool = True  # pfeiffer style: AdapterHub's LayerNorm arrangement (as adapter_p)
    drop_mode: str = "static"  # static: no adapters in the lowest drop_layers | random: drop per training step
    drop_layers: int = 5  # static: no adapter in blocks 0 .. drop_layers-1
    max_drop: int | None = None  # random: n ~ U{0..max_drop} lowest blocks skipped per step; None: blocks - 2
    eval_drop_layers: int = 0  # random: blocks 0 .. eval_drop_layers-1 skipped outside training
    seed: int = 0  # random: seeds the per-step draws


class BottleneckAdapters(PeftMethod):
    """Common machinery; variants set :attr:`where` / :attr:`own_norm` or override :meth:`keep_layer`."""

    config_cls = AdapterConfig
    where: ClassVar[tuple[str, ...]] = ("ffn",)
    own_norm: ClassVar[bool] = False

    def validate(self) -> None:
        c = self.config
        if c.activation not in ACTIVATIONS:
            raise MethodError(f"{self.name} activation='{c.activation}' is unknown; "
                              f"choose one of {sorted(ACTIVATIONS)}")
        if c.bottleneck is not None and c.bottleneck < 1:
            raise MethodError(f"{self.name} bottleneck={c.bottleneck} must be at least 1")
        if getattr(c, "placement", "block") not in ("block", "ffn"):
            raise MethodError(f"{self.name} placement='{c.placement}' is unknown; choose block or ffn")
        if c.init_scale is not None and not c.init_scale > 0:
            raise MethodError(f"{self.name} init_scale={c.init_scale} must be positive (or null for a zero "
                              "up-projection)")
        if c.bottleneck is None and not c.reduction_factor > 0:
            raise MethodError(f"{self.name} reduction_factor={c.reduction_factor} must be positive")

    def placement(self) -> tuple[str, ...]:
        return self.where

    def keep_layer(self, module_name: str) -> bool:
        """Placement hook: whether this matched module gets an adapter (AdapterDrop filters by depth)."""
        return True

    _block_names: frozenset[str] = frozenset()

    def targets(self, model: nn.Module) -> list[str] | str:
        """Full names of the modules to wrap (explicit names, so the base matcher cannot over-match)."""
        self._block_names = frozenset()
        if self.config.target_modules is not None:
            spec = self.config.target_modules
            names = [n for n, _ in model.named_modules() if n and match_target(n, spec)]
        elif self.uses_blocks(model):
            pat = re.compile(BLOCK_PRESETS[model_type(model)])
            names = [n for n, _ in model.named_modules() if pat.fullmatch(n)]
            cfg = getattr(model, "config", None)
            self._hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
            if not self._hidden:
                raise MethodError(f"{self.name} placement=block needs the model's hidden size (config.hidden_size)")
            self._block_names = frozenset(n for n in names if self.keep_layer(n))
        elif self.uses_output_blocks(model):
            pat = re.compile(OUTPUT_BLOCK_PRESETS[model_type(model)])
            names = [n for n, m in model.named_modules() if pat.fullmatch(n) and is_output_block(m)]
        else:
            pats = [re.compile(p) for p in placement_patterns(model, self.placement())]
            names = [n for n, _ in model.named_modules() if any(p.fullmatch(n) for p in pats)]
        kept = [n for n in names if self.keep_layer(n)]
        if names and not kept:
            raise MethodError(f"{self.name} leaves no adapter: every matched layer was dropped ({self._drop_note()})")
        return kept if kept else (self.config.target_modules or [])

    def _drop_note(self) -> str:
        return ""

    def bottleneck_for(self, hidden: int) -> int:
        c = self.config
        return c.bottleneck if c.bottleneck is not None else max(1, int(hidden // c.reduction_factor))

    def uses_blocks(self, model: nn.Module) -> bool:
        """Adapters on whole transformer blocks: Adapter-L's ``placement=block``, and Pfeiffer's
        ``original_ln`` arrangement on pre-LN blocks (AdapterHub: ``H + up(f(down(H)))`` with ``H`` the block's
        output ``residual + ffn``, no LayerNorm to re-apply)."""
        if self.config.target_modules is not None or model_type(model) not in BLOCK_PRESETS:
            return False
        if getattr(self.config, "placement", None) == "block":
            return True
        return (self.config.original_ln and self.placement() == ("ffn",)
                and model_type(model) not in OUTPUT_BLOCK_PRESETS)

    def uses_output_blocks(self, model: nn.Module) -> bool:
        """AdapterHub's Pfeiffer arrangement applies: FFN-only adapters, ``original_ln``, a post-LN preset."""
        return (self.config.original_ln and self.config.target_modules is None and self.placement() == ("ffn",)
                and model_type(model) in OUTPUT_BLOCK_PRESETS)

    def accepts(self, name: str, module: nn.Module) -> bool:
        return super().accepts(name, module) or is_output_block(module) or name in self._block_names

    def target_weights(self, module: nn.Module) -> list[torch.Tensor]:
        if is_output_block(module):
            return [module.dense.weight]
        if is_linear_like(module):
            return super().target_weights(module)
        return []  # a whole transformer block: nothing of it is read or written

    def before_wrap(self, model: nn.Module, names: list[str]) -> None:
        """With a placement preset, find the dropout after each wrapped projection (moved in by :meth:`wrap`)."""
        self._dropouts: dict[str, tuple[nn.Module, str]] = {}
        sib = POST_DROPOUT.get(model_type(model)) if self.config.target_modules is None else None
        if sib is None:
            return
        attn, ffn = (re.compile(pat) for pat in placement_patterns(model, ("attn", "ffn")))
        for n in names:
            attr = sib[0] if attn.fullmatch(n) else sib[1] if ffn.fullmatch(n) else None
            parent_name = n.rpartition(".")[0]
            parent = model.get_submodule(parent_name) if parent_name else model
            if attr is not None and isinstance(getattr(parent, attr, None), nn.Module):
                self._dropouts[n] = (parent, attr)

    def wrap(self, name: str, module: nn.Module) -> BottleneckAdapterLayer:
        if name in self._block_names:
            return BlockAdapterLayer(module, self._hidden, self.bottleneck_for(self._hidden), self.config.activation,
                                     layer_norm=self.own_norm, name=name, init_scale=self.config.init_scale,
                                     autocast_adapter_dtype=self.config.autocast_adapter_dtype)
        if is_output_block(module):
            return OutputBlockAdapterLayer(module, self.bottleneck_for(module.dense.out_features),
                                           self.config.activation, name=name, init_scale=self.config.init_scale,
                                           autocast_adapter_dtype=self.config.autocast_adapter_dtype)
        out_features, _ = layer_shape(module)
        drop = None
        if name in getattr(self, "_dropouts", {}):
            parent, attr = self._dropouts[name]
            drop = getattr(parent, attr)
            setattr(parent, attr, nn.Identity().train(drop.training))  # the adapter layer applies it now
        return BottleneckAdapterLayer(module, self.bottleneck_for(out_features), self.config.activation,
                                      layer_norm=self.own_norm, name=name, init_scale=self.config.init_scale,
                                      block_dropout=drop, autocast_adapter_dtype=self.config.autocast_adapter_dtype)

    def mark_trainable(self, model: nn.Module) -> None:
        self._dropouts = {}  # the end of apply: keep no references to the model's modules
        super().mark_trainable(model)
        if self.config.train_layer_norm:
            for m in _norm_layers(model):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)

    def merge(self, model: nn.Module, safe: bool = False, dequantize: bool = False) -> nn.Module:
        raise MethodError(
            f"method '{self.name}' is not mergeable: a bottleneck adapter is a serial nonlinear module "
            "(y + f(y W_down) W_up), not a weight update; keep it unmerged for inference"
        )

    def unmerge(self, model: nn.Module) -> nn.Module:
        return model  # never merged


def _norm_layers(model: nn.Module) -> Iterator[nn.Module]:
    """The model's own LayerNorm / RMSNorm modules (not the adapters' ones)."""
    own = {id(m) for layer in model.modules() if isinstance(layer, BottleneckAdapterLayer)
           for n, m in layer.named_modules() if n and not n.startswith("base_layer")}
    for m in model.modules():
        if id(m) in own:
            continue
        if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("LayerNorm", "RMSNorm")):
            yield m


@register("adapter_h")
class AdapterHoulsby(BottleneckAdapters):
    """Houlsby et al. 2019: two adapters per block (attention output and FFN output)."""

    config_cls = HoulsbyConfig
    paper_order = 3
    export_formats = ()
    peft_type = None
    where = ("attn", "ffn")


@register("adapter_p")
class AdapterPfeiffer(BottleneckAdapters):
    """Pfeiffer et al. 2021: one adapter per block, after the FFN output."""

    config_cls = PfeifferConfig
    paper_order = 4
    export_formats = ()
    peft_type = None
    where = ("ffn",)


@register("adapter_l")
class AdapterLin(BottleneckAdapters):
    """Lin et al. 2020: one adapter per block after the FFN, with its own LayerNorm on the adapter input."""

    config_cls = LinConfig
    paper_order = 5
    export_formats = ()
    peft_type = None
    where = ("ffn",)
    own_norm = True


@register("adapter_d")
class AdapterDrop(BottleneckAdapters):
    """Rücklé et al. 2021: Pfeiffer/Houlsby adapters dropped from the lowest blocks (static or random per step)."""

    config_cls = AdapterDropConfig
    paper_order = 6
    export_formats = ()
    peft_type = None
    STYLES: ClassVar[dict[str, tuple[str, ...]]] = {"pfeiffer": ("ffn",), "houlsby": ("attn", "ffn")}
    DROP_MODES: ClassVar[tuple[str, ...]] = ("static", "random")

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.style not in self.STYLES:
            raise MethodError(f"adapter_d style='{c.style}' is unknown; choose one of {sorted(self.STYLES)}")
        if c.drop_mode not in self.DROP_MODES:
            raise MethodError(f"adapter_d drop_mode='{c.drop_mode}' is unknown; choose one of {list(self.DROP_MODES)}")
        for key in ("drop_layers", "eval_drop_layers") + (("max_drop",) if c.max_drop is not None else ()):
            if getattr(c, key) < 0:
                raise MethodError(f"adapter_d {key}={getattr(c, key)} must be >= 0")

    def placement(self) -> tuple[str, ...]:
        return self.STYLES[self.config.style]

    def keep_layer(self, module_name: str) -> bool:
        idx = layer_index(module_name)
        if idx is None:
            raise MethodError(f"adapter_d cannot tell the block index of '{module_name}' to drop adapters by depth")
        return self.config.drop_mode == "random" or idx >= self.config.drop_layers

    def _drop_note(self) -> str:
        return f"drop_layers={self.config.drop_layers}"

    def wrap(self, name: str, module: nn.Module) -> BottleneckAdapterLayer:
        layer = super().wrap(name, module)
        layer.block_index = layer_index(name)
        return layer

    def apply(self, model: nn.Module) -> nn.Module:
        super().apply(model)
        c = self.config
        if c.drop_mode == "random":
            blocks = self.num_blocks(model)
            if c.max_drop is not None and c.max_drop >= blocks:
                raise MethodError(f"adapter_d max_drop={c.max_drop} would drop every adapter of a {blocks}-block "
                                  f"model; it must be < {blocks}")
            for layer in self._drop_layers(model):
                layer.eval_skip = layer.block_index < c.eval_drop_layers
        return model

    def _drop_layers(self, model: nn.Module) -> list[BottleneckAdapterLayer]:
        return [m for m in self.adapter_layers(model) if isinstance(m, BottleneckAdapterLayer)]

    def num_blocks(self, model: nn.Module) -> int:
        """Blocks holding adapters (the highest block index + 1)."""
        return 1 + max(m.block_index for m in self._drop_layers(model))

    def largest_drop(self, model: nn.Module) -> int:
        """The largest number of lowest blocks one training step skips (random mode)."""
        c = self.config
        return c.max_drop if c.max_drop is not None else max(0, self.num_blocks(model) - 2)

    def sample_drop(self, step: int, max_drop: int) -> int:
        """``n`` of training step ``step``: uniform on ``0..max_drop``, a pure function of ``(seed, step)``."""
        return step_randint(self.config.seed, step, 0, max_drop)

    def on_before_forward(self, model: nn.Module, step: int) -> None:
        if self.config.drop_mode != "random":
            return
        n = self.sample_drop(step, self.largest_drop(model))
        for layer in self._drop_layers(model):
            layer.train_skip = layer.block_index < n
