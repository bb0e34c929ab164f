"""VeRA (Kopiczko et al., ICLR 2024, arXiv 2310.11454): shared frozen random projections, trained scalings.

One pair of frozen matrices serves every adapted layer: ``A`` (r x in_max) and ``B`` (out_max x r), where
``in_max`` / ``out_max`` are the largest input / output sizes among the targets. Layer ``l`` (out x in)
computes ``y = W x + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x))))`` with trainable vectors
``lambda_d`` (r, init ``d_initial``) and ``lambda_b`` (out, init 0), so the model is unchanged at step 0.

``A`` and ``B`` are Kaiming-uniform (gain sqrt 2, fan-in = their second dimension, bound sqrt(6 / fan_in))
drawn in that order from a CPU ``torch.Generator`` seeded with ``projection_prng_key``: the same tensors
HF PEFT builds from the same key. The adapter state dict always carries the key (``vera_prng_key``) and,
with ``save_projection`` (the default, as HF PEFT), the matrices themselves (``vera_A``, ``vera_B``);
without them a load re-derives the matrices from the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MethodConfig
from .errors import MethodError
from .layer import AdapterLayer
from .method import PeftMethod
from .registry import register
from .weights import layer_shape

PROJ_KEYS = ("vera_A", "vera_B")
KEY_KEY = "vera_prng_key"


def kaiming_uniform_projections(r: int, in_max: int, out_max: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared ``(A, B)``: uniform(+-sqrt(6 / fan_in)) from one generator seeded with ``key``, A first."""
    g = torch.Generator(device="cpu").manual_seed(key)

    def draw(shape: tuple[int, int]) -> torch.Tensor:
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])  # gain sqrt(2) (ReLU), fan_in = shape[1]
        return torch.empty(shape).uniform_(-bound, bound, generator=g)

    A = draw((r, in_max))
    B = draw((out_max, r))
    return A, B


class VeraProjections(nn.Module):
    """Holds the shared frozen ``A``/``B`` once; every layer refers to this one module, so ``.to()`` keeps
    them shared. Non-persistent: :class:`Vera` saves them (or the key) once, not per layer."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A, persistent=False)
        self.register_buffer("B", B, persistent=False)


class VeraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Module, projections: VeraProjections, r: int, d_initial: float,
                 dropout: float = 0.0, *, autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, autocast_adapter_dtype=autocast_adapter_dtype)
        if projections.A.shape[1] < self.in_features or projections.B.shape[0] < self.out_features:
            raise MethodError(f"VeRA projections {tuple(projections.A.shape)}/{tuple(projections.B.shape)} are too "
                              f"small for a {self.out_features}x{self.in_features} layer")
        self.r = r
        self.vera_projections = projections
        w = base_layer.weight
        kw = dict(dtype=self.adapter_dtype, device=w.device)
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, **kw))
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(d_initial), **kw))
        self.vera_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _sliced(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.vera_projections.A[:, : self.in_features].to(self.vera_lambda_d),
                self.vera_projections.B[: self.out_features, :].to(self.vera_lambda_d))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self._sliced()
        x = self.vera_dropout(x).to(self.vera_lambda_d.dtype)
        return self.vera_lambda_b * F.linear(self.vera_lambda_d * F.linear(x, A), B)

    def delta_weight(self) -> torch.Tensor:
        A, B = self._sliced()
        return (self.vera_lambda_b.float()[:, None] * B.float()) @ (self.vera_lambda_d.float()[:, None] * A.float())


@dataclass
class VeraConfig(MethodConfig):
    r: int = 1024  # the paper's rank for RoBERTa-base GLUE and GPT-2 E2E (RoBERTa-large: 256)
    d_initial: float = 0.1  # initial value of every lambda_d entry
    dropout: float = 0.0
    projection_prng_key: int = 0  # seed of the shared random matrices
    save_projection: bool = True  # store A/B in the adapter state dict (else: re-derive from the key)


@register("vera")
class Vera(PeftMethod):
    config_cls = VeraConfig
    paper_order = 10
    export_formats = ("peft", "lora", "merged")
    peft_type = "VERA"

    def validate(self) -> None:
        if self.config.r < 1:
            raise MethodError(f"vera r={self.config.r} must be at least 1")

    def before_wrap(self, model: nn.Module, names: list[str]) -> None:
        shapes = [layer_shape(model.get_submodule(n)) for n in names]
        out_max, in_max = max(s[0] for s in shapes), max(s[1] for s in shapes)
        w = model.get_submodule(names[0]).weight
        if w.device.type == "meta":
            # A meta model (parameter counts, the memory planner) keeps shapes only: drawing r x 11008 values on
            # the CPU to discard them cost ~0.1 s per apply on a 7B shape.
            A, B = torch.empty(self.config.r, in_max, device="meta"), torch.empty(out_max, self.config.r, device="meta")
        else:
            A, B = kaiming_uniform_projections(self.config.r, in_max, out_max, self.config.projection_prng_key)
        # float32 at least: they are the fixed basis of every layer's update.
        dtype = torch.promote_types(w.dtype, torch.float32)
        self._projections = VeraProjections(A.to(device=w.device, dtype=dtype), B.to(device=w.device, dtype=dtype))

    def wrap(self, name: str, module: nn.Module) -> VeraLayer:
        c = self.config
        return VeraLayer(module, self._projections, c.r, c.d_initial, c.dropout,
                         autocast_adapter_dtype=c.autocast_adapter_dtype)

    def projections(self, model: nn.Module) -> VeraProjections:
        for m in self.adapter_layers(model):
            if isinstance(m, VeraLayer):
                return m.vera_projections
        raise MethodError("model has no VeRA layers; call method.apply(model) first")

    # -- saving: the shared matrices once (or only the key) -------------------------------------------
    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        sd = super().adapter_state_dict(model)
        proj = self.projections(model)
        sd[KEY_KEY] = torch.tensor(self.config.projection_prng_key, dtype=torch.int64)
        if self.config.save_projection:
            sd["vera_A"] = proj.A.detach().clone()
            sd["vera_B"] = proj.B.detach().clone()
        return sd

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        state_dict = dict(state_dict)
        A, B = state_dict.pop("vera_A", None), state_dict.pop("vera_B", None)
        key = state_dict.pop(KEY_KEY, None)
        proj = self.projections(model)
        if A is None or B is None:
            if key is None:
                raise MethodError("VeRA adapter state dict has neither the projections nor their PRNG key")
            A, B = kaiming_uniform_projections(proj.A.shape[0], proj.A.shape[1], proj.B.shape[0], int(key))
        if A.shape != proj.A.shape or B.shape != proj.B.shape:
            raise MethodError(f"VeRA projections in the state dict {tuple(A.shape)}/{tuple(B.shape)} do not fit "
                              f"this model's {tuple(proj.A.shape)}/{tuple(proj.B.shape)}")
        merged = [layer for layer in self.adapter_layers(model) if layer.merged]
        for layer in merged:  # the merged delta depends on the projections: unmerge with the old ones
            layer.unmerge()
        with torch.no_grad():
            proj.A.copy_(A.to(proj.A))
            proj.B.copy_(B.to(proj.B))
        super().load_adapter_state_dict(model, state_dict)
        for layer in merged:
            layer.merge()
        return model
