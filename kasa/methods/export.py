"""Adapters in other libraries' formats: HF PEFT's adapter folder, an exact plain LoRA, and the way back.

This module is the one place that maps kasa's tensor names to PEFT's. kasa names an adapter tensor by its
module path in the adapted model plus the tensor (``model.state_dict()`` / ``method.adapter_state_dict``):
``bert.encoder.layer.0.attention.self.query.lora_A``. PEFT's ``adapter_model.safetensors`` (PEFT 0.21, adapter
name ``default`` removed, as ``PeftModel.save_pretrained`` writes it) names the same tensor

=========================  ================================  =======================================================
kasa tensor                PEFT tensor                       methods
=========================  ================================  =======================================================
``<m>.lora_A``             ``<P><m>.lora_A.weight``          lora, dora, kasa, pissa (``nn.Linear`` weights in PEFT)
``<m>.lora_B``             ``<P><m>.lora_B.weight``          lora, dora, kasa, pissa
``<m>.lora_magnitude``     ``<P><m>.lora_magnitude_vector``  dora
``<m>.lora_diag``          ``<P><m>.lora_diag``              kasa (``LoraConfig(kasa_config=KasaConfig(...))``)
``<m>.lora_{A,B,E}``       ``<P><m>.lora_{A,B,E}``           adalora (plain parameters in PEFT)
``<m>.vera_lambda_{b,d}``  ``<P><m>.vera_lambda_{b,d}``      vera
``vera_A``, ``vera_B``     ``base_model.vera_A``, ``_B``     vera: the shared projections, stored once
``<head>.<param>``         ``<P><head>.<param>``             every method: the task head (``modules_to_save``)
=========================  ================================  =======================================================

with ``<P>`` = ``base_model.model.`` (:data:`PEFT_PREFIX`; the dict form is :data:`PEFT_NAMES`). kasa's own
buffers that PEFT does not save (KaSA's removed triplets, the residual methods' initial factors, AdaLoRA's
mask) are re-derived by ``method.apply`` on the original base when an adapter comes back.

Formats (:data:`FORMATS`; ``python -m kasa.params`` prints them):

- ``peft``: the method's own PEFT adapter, loaded with ``PeftModel.from_pretrained(base, folder)`` on the
  ORIGINAL base model. KaSA: PEFT's ``KasaLinearVariant`` re-truncates the base on load (a float32 full SVD
  dropping the ``r`` smallest triplets, the same truncation kasa's ``truncation=paper`` makes), so only
  ``truncation=paper``, ``truncation_rank=r``, ``singular_values=learnable`` on ``nn.Linear`` targets have a PEFT
  form. PiSSA and CorDA: PEFT's documented way to share them (``save_pretrained(...,
  path_initial_model_for_weight_conversion=...)``) converts them to a plain LoRA of rank ``2 r`` that needs no
  residual base; ``peft`` writes that same exact LoRA (:func:`lora_adapter`).
- ``lora``: a plain LoRA on the ORIGINAL base weights with only ``lora_A`` / ``lora_B`` (plus the task head for
  classifiers), the format vLLM and TGI serve: ``W' - W = B A`` exactly, the scaling folded into ``B`` and
  ``lora_alpha = r`` (PEFT scaling 1), one rank for every module (zero-padded where layers differ).
  KaSA: rank ``t + r`` (``-U_t S_t`` / ``V_t^T`` for the truncation, ``scaling dU diag(dsigma)`` / ``dV^T`` for the
  update); PiSSA / MiLoRA / CorDA: ``2 r`` (trained minus initial factors); AdaLoRA: the unmasked triplets;
  DyLoRA: ``eval_rank``; SARA: the largest per-layer rank; VeRA: ``r`` (``lambda_b B`` / ``lambda_d A``).
- ``merged`` (written by :mod:`kasa.runs.export`): the merged transformers model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MethodError
from .layer import AdapterLayer
from .method import PeftMethod
from .registry import REGISTRY
from .targets import match_target

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# kasa tensor of a wrapped module -> PEFT's name for it (after ``PEFT_PREFIX + <module>.``), per method.
_LORA = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}
PEFT_NAMES: dict[str, dict[str, str]] = {
    "lora": dict(_LORA),
    "pissa": dict(_LORA),
    "dora": {**_LORA, "lora_magnitude": "lora_magnitude_vector"},
    "kasa": {**_LORA, "lora_diag": "lora_diag"},
    "adalora": {"lora_A": "lora_A", "lora_B": "lora_B", "lora_E": "lora_E"},
    "vera": {"vera_lambda_b": "vera_lambda_b", "vera_lambda_d": "vera_lambda_d"},
}
# kasa adapter-state-dict keys shared by every layer -> PEFT key.
PEFT_SHARED: dict[str, dict[str, str]] = {"vera": {"vera_A": "base_model.vera_A", "vera_B": "base_model.vera_B"}}

FORMAT_NAMES = ("peft", "lora", "merged")


class _RegistryView(Mapping[str, Any]):
    """A read-only ``{method name: class attribute}`` view of the registry, read when looked at (a method
    registered later is in it; nothing here has to be kept in step with the method classes)."""

    def __init__(self, attr: str, keep: Any = lambda value: True):
        self._attr, self._keep = attr, keep

    def _items(self) -> dict[str, Any]:
        return {n: getattr(cls, self._attr) for n, cls in REGISTRY.items() if self._keep(getattr(cls, self._attr))}

    def __getitem__(self, name: str) -> Any:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


# Method name -> the formats its class declares (``PeftMethod.export_formats``).
FORMATS: Mapping[str, tuple[str, ...]] = _RegistryView("export_formats")
# Why a (method, format) pair has no export; "*" is the fallback for a format.
_WHY_NOT: dict[tuple[str, str], str] = {
    ("dora", "lora"): "DoRA's magnitude rescales every output row of W + dW, which no low-rank B A on W expresses",
    ("bitfit", "lora"): "BitFit trains biases, which a LoRA (weights only) cannot carry",
    ("fft", "lora"): "full fine-tuning changes every weight at full rank",
    ("fft", "peft"): "full fine-tuning has no adapter: the merged model is the trained model",
    ("bitfit", "peft"): "HF PEFT has no BitFit: the trained biases are part of the merged model",
    ("*", "peft"): "HF PEFT has no {method}; its exact plain LoRA is a PEFT LoRA folder",
    ("*", "lora"): "{method}'s update is not low rank",
}
_ADAPTERS_WHY = ("bottleneck adapters are serial and nonlinear: HF PEFT has none, they have no low-rank form and "
                 "cannot be merged into the weights; load the run in Python with kasa.runs.load.load_run")
# Why a method has no export format at all (its class declares ``export_formats = ()``).
_NO_FORMAT_WHY: dict[str, str] = {n: _ADAPTERS_WHY for n in ("adapter_h", "adapter_p", "adapter_l", "adapter_d")}
# Method name -> HF PEFT type, for the methods PEFT shares with kasa (``PeftMethod.peft_type``):
# ``method.init_from=<PEFT folder>`` starts from such an adapter.
IMPORTABLE: Mapping[str, str] = _RegistryView("peft_type", keep=lambda t: t is not None)


def formats(method_name: str) -> tuple[str, ...]:
    """The export formats of a registered method (its class's ``export_formats``; () for an unknown name)."""
    cls = REGISTRY.get(method_name)
    return tuple(cls.export_formats) if cls is not None else ()


def check_format(method_name: str, fmt: str, config: Any = None) -> None:
    """Raise :class:`MethodError` (one line) when ``method_name`` (with ``config``) cannot be exported as ``fmt``.

    Decided from the names and the config alone, so ``kasa-export`` fails before any model loads.
    """
    if fmt not in FORMAT_NAMES:
        raise MethodError(f"export format '{fmt}' is unknown; choose one of {list(FORMAT_NAMES)}")
    if method_name not in REGISTRY:
        raise MethodError(f"unknown method '{method_name}'; known methods: {' '.join(sorted(REGISTRY))}")
    have = formats(method_name)
    if not have:
        why = _NO_FORMAT_WHY.get(method_name, f"its class {REGISTRY[method_name].__name__} declares none "
                                 "(PeftMethod.export_formats)")
        raise MethodError(f"{method_name} has no export format: {why}")
    if fmt not in have:
        why = _WHY_NOT.get((method_name, fmt)) or _WHY_NOT.get(("*", fmt), "not supported")
        raise MethodError(f"--format {fmt} is not available for {method_name}: {why.format(method=method_name)}; "
                          f"it exports as {' or '.join(have)}")
    if method_name == "kasa" and fmt == "peft" and config is not None:
        _check_kasa_peft(config)


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def _check_kasa_peft(config: Any) -> None:
    """PEFT's KaSA truncates the r smallest of min(in, out) triplets and learns dsigma: nothing else maps."""
    r = _cfg_get(config, "r")
    bad = []
    if _cfg_get(config, "truncation", "paper") != "paper":
        bad.append(f"truncation={_cfg_get(config, 'truncation')}")
    t = _cfg_get(config, "truncation_rank")
    if t is not None and t != r:
        bad.append(f"truncation_rank={t} (r={r})")
    if _cfg_get(config, "singular_values", "learnable") != "learnable":
        bad.append(f"singular_values={_cfg_get(config, 'singular_values')}")
    if bad:
        raise MethodError(f"--format peft: PEFT's KaSA has no form of kasa {', '.join(bad)} (it truncates the r "
                          "smallest triplets of min(in, out) and learns dsigma); use --format lora or merged")


# ----------------------------------------------------------------------------------------------------
@dataclass
class Adapter:
    """An adapter in PEFT's layout: ``config`` is ``adapter_config.json``, ``tensors`` the safetensors file."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def wrapped(model: nn.Module) -> dict[str, AdapterLayer]:
    """``{module name: layer}`` of every kasa adapter layer in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def head_modules(method: PeftMethod, model: nn.Module) -> list[str]:
    """Names of the outermost task-head modules (what PEFT's ``modules_to_save`` lists)."""
    heads = method.heads(model)
    names = [n for n, m in model.named_modules()
             if n and match_target(n, heads) and not isinstance(m, AdapterLayer) and any(True for _ in m.parameters())]
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def head_tensors(method: PeftMethod, model: nn.Module) -> dict[str, torch.Tensor]:
    """The task head's state, PEFT-named (``base_model.model.<head>.<param>``)."""
    out = {}
    for h in head_modules(method, model):
        for k, v in model.get_submodule(h).state_dict().items():
            out[f"{PEFT_PREFIX}{h}.{k}"] = v.detach()
    return out


def _targets_conv1d(model: nn.Module) -> bool:
    return bool(Conv1D) and any(isinstance(m.base_layer, Conv1D) for m in wrapped(model).values())


def _targets(method: PeftMethod, model: nn.Module) -> list[str] | str:
    t = method.targets(model)
    return t if isinstance(t, str) else sorted(t)


def base_config(method: PeftMethod, model: nn.Module, peft_type: str) -> dict[str, Any]:
    """Fields every adapter_config.json gets (``task_type`` and ``base_model_name_or_path`` are set by the writer)."""
    heads = head_modules(method, model)
    return {"peft_type": peft_type, "task_type": None, "base_model_name_or_path": None, "revision": None,
            "target_modules": _targets(method, model), "modules_to_save": heads or None, "inference_mode": True,
            "fan_in_fan_out": _targets_conv1d(model), "bias": "none"}


def _lora_fields(r: int, alpha: float, dropout: float, use_rslora: bool) -> dict[str, Any]:
    return {"r": int(r), "lora_alpha": alpha, "lora_dropout": float(dropout), "use_rslora": bool(use_rslora),
            "use_dora": False, "init_lora_weights": True, "kasa_config": None, "rank_pattern": {}, "alpha_pattern": {}}


def _per_module(model: nn.Module, names: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for n, layer in wrapped(model).items():
        for ours, theirs in names.items():
            out[f"{PEFT_PREFIX}{n}.{theirs}"] = getattr(layer, ours).detach()
    return out


def peft_adapter(method: PeftMethod, model: nn.Module) -> Adapter:
    """The method's own PEFT adapter for ``model`` (adapted and trained by kasa); see the module docstring."""
    name = method.name
    check_format(name, "peft", method.config)
    c = method.config
    if name in ("pissa", "corda"):  # PEFT's converted form (path_initial_model_for_weight_conversion)
        return lora_adapter(method, model)
    if name in ("lora", "dora", "kasa"):
        if name == "kasa" and _targets_conv1d(model):
            raise MethodError("--format peft: PEFT's KaSA does not support Conv1D layers (GPT-2); use --format lora "
                              "or merged")
        cfg = {**base_config(method, model, "LORA"), **_lora_fields(c.r, c.alpha, c.dropout, c.use_rslora)}
        if name == "dora":
            cfg["use_dora"] = True
        if name == "kasa":
            cfg["kasa_config"] = {"beta": float(c.beta), "gamma": float(c.gamma)}
        tensors = _per_module(model, PEFT_NAMES[name])
    elif name == "adalora":
        tinit, tfinal, total = method.peft_schedule()
        cfg = {**base_config(method, model, "ADALORA"), "r": int(c.init_r), "init_r": int(c.init_r),
               "target_r": int(c.target_r), "lora_alpha": c.alpha, "lora_dropout": float(c.dropout),
               "tinit": tinit, "tfinal": tfinal, "deltaT": int(c.deltaT), "beta1": float(c.beta1),
               "beta2": float(c.beta2), "orth_reg_weight": float(c.orth_reg_weight), "total_step": int(total),
               "rank_pattern": None, "init_lora_weights": True, "use_rslora": False, "use_dora": False}
        tensors = _per_module(model, PEFT_NAMES[name])  # masked triplets are zero in lora_E: no rank_pattern needed
    elif name == "vera":
        proj = method.projections(model)
        cfg = {**base_config(method, model, "VERA"), "r": int(c.r), "projection_prng_key": int(c.projection_prng_key),
               "save_projection": True, "vera_dropout": float(c.dropout), "d_initial": float(c.d_initial),
               "init_weights": True}
        tensors = _per_module(model, PEFT_NAMES[name])
        tensors[PEFT_SHARED["vera"]["vera_A"]] = proj.A.detach()
        tensors[PEFT_SHARED["vera"]["vera_B"]] = proj.B.detach()
    else:  # pragma: no cover - FORMATS and this function list the same methods
        raise MethodError(f"--format peft is not implemented for {name}")
    tensors.update(head_tensors(method, model))
    return Adapter(cfg, tensors)


# ----------------------------------------------------------------------------------------------------
# exact plain LoRA on the original base
def lora_factors(method: PeftMethod, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A, B)}`` with ``B @ A`` equal to the layer's change of the ORIGINAL weight (scaling folded in)."""
    name = method.name
    check_format(name, "lora")
    layers = wrapped(model)
    if hasattr(method, "export_lora"):  # KaSA (rank t + r) and the residual methods (2 r): scaling 1
        _, sd = method.export_lora(model)
        return {n: (sd[f"{n}.lora_A"], sd[f"{n}.lora_B"]) for n in layers}
    out = {}
    with torch.no_grad():
        for n, m in layers.items():
            if name == "lora":
                A, B = m.lora_A.float(), m.lora_B.float() * m.scaling
            elif name == "dylora":
                b = m.eval_rank
                A, B = m.lora_A[:b].float(), m.lora_B[:, :b].float() * m.scaling_for(b)
            elif name == "adalora":
                keep = m.lora_E.view(-1) != 0  # pruned triplets have E = 0 (the mask zeroes them) and add nothing
                A = (m.lora_A.float() * m.lora_E.float())[keep]
                B = m.lora_B.float()[:, keep] * m.factor
            elif name == "sara":
                A, B = m.lora_A.float(), m.lora_B.float() * m.lora_diag.float()
            elif name == "vera":
                pa, pb = m._sliced()
                A = m.vera_lambda_d.float()[:, None] * pa.float()
                B = m.vera_lambda_b.float()[:, None] * pb.float()
            else:  # pragma: no cover
                raise MethodError(f"--format lora is not implemented for {name}")
            dtype = m.adapter_dtype  # float32 on a half-precision base, as kasa trains it and PEFT loads it
            out[n] = (A.to(dtype), B.to(dtype))
    return out


def lora_adapter(method: PeftMethod, model: nn.Module) -> Adapter:
    """The exact plain LoRA (``lora_A`` / ``lora_B`` only, one rank, ``lora_alpha = r``) plus the task head."""
    factors = lora_factors(method, model)
    rank = max(max(A.shape[0] for A, _ in factors.values()), 1)
    tensors = {}
    for n, (A, B) in factors.items():
        pad = rank - A.shape[0]
        if pad:  # zero rows/columns add nothing: one rank for every module, as vLLM / TGI expect
            A = torch.cat([A, A.new_zeros(pad, A.shape[1])])
            B = torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
        tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"] = A.contiguous()
        tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"] = B.contiguous()
    tensors.update(head_tensors(method, model))
    cfg = {**base_config(method, model, "LORA"), **_lora_fields(rank, float(rank), 0.0, False),
           "target_modules": sorted(factors)}
    return Adapter(cfg, tensors)


# ----------------------------------------------------------------------------------------------------
# import: method.init_from=<PEFT folder>
def read_peft_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config, tensors)`` of a PEFT folder; a missing, tampered or truncated file fails in one line."""
    from kasa.errors import UnreadableFileError
    from kasa.runs.files import read_json, read_safetensors

    folder = Path(folder).expanduser()
    try:
        return read_json(folder / ADAPTER_CONFIG), read_safetensors(folder / ADAPTER_WEIGHTS)
    except UnreadableFileError as exc:
        raise MethodError(f"PEFT adapter folder: {exc}") from None


def _expect(cfg: dict[str, Any], key: str, want: Any, have_default: Any, where: str) -> None:
    got = cfg.get(key, have_default)
    if isinstance(want, float) or isinstance(got, float):
        same = got is not None and want is not None and math.isclose(float(got), float(want), rel_tol=1e-9)
    else:
        same = got == want
    if not same:
        raise MethodError(f"method.init_from: {where} has {key}={got!r}, this run has {want!r}; set it to match")


def _check_peft_config(method: PeftMethod, cfg: dict[str, Any], where: str) -> None:
    name, c = method.name, method.config
    peft_type = method.peft_type
    _expect(cfg, "peft_type", peft_type, None, where)
    if peft_type == "LORA":
        _expect(cfg, "r", c.r, None, where)
        _expect(cfg, "lora_alpha", float(c.alpha), 8, where)
        _expect(cfg, "use_rslora", bool(c.use_rslora), False, where)
        _expect(cfg, "use_dora", name == "dora", False, where)
        if (cfg.get("kasa_config") is not None) != (name == "kasa"):
            raise MethodError(f"method.init_from: {where} is {'a KaSA' if cfg.get('kasa_config') else 'not a KaSA'} "
                              f"adapter; this run's method is {name}")
        if name == "kasa":
            _check_kasa_peft(c)
        init = cfg.get("init_lora_weights", True)
        is_pissa = isinstance(init, str) and init.startswith("pissa")
        if name == "pissa" and not is_pissa:
            raise MethodError(f"method.init_from: {where} has init_lora_weights={init!r}, not a PiSSA adapter "
                              "(a converted PiSSA is a plain LoRA: use method=lora with its r and alpha)")
        if name != "pissa" and isinstance(init, str) and init not in ("gaussian", "eva"):
            raise MethodError(f"method.init_from: {where} has init_lora_weights={init!r}: its base weights were "
                              f"changed at init, which method={name} does not reproduce")
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise MethodError(f"method.init_from: {where} has a rank_pattern / alpha_pattern (per-module ranks), "
                              "which kasa's LoRA-family methods do not take")
    elif peft_type == "ADALORA":
        _expect(cfg, "init_r", c.init_r, 12, where)
        _expect(cfg, "lora_alpha", float(c.alpha), 8, where)
    else:
        _expect(cfg, "r", c.r, 256, where)
        _expect(cfg, "projection_prng_key", c.projection_prng_key, 0, where)


def load_peft_adapter(method: PeftMethod, model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a PEFT adapter folder into ``model`` (already prepared by ``method.apply``): ``method.init_from``.

    The adapter config must match the method (type, rank, alpha, rsLoRA, DoRA/KaSA) and the tensors must cover
    exactly the wrapped modules (and the task head, when the model has one); a mismatch is named in one line.
    """
    folder = Path(folder).expanduser()
    where = str(folder / ADAPTER_CONFIG)
    cfg, tensors = read_peft_folder(folder)
    _check_peft_config(method, cfg, where)
    layers = wrapped(model)
    names = PEFT_NAMES[method.name]
    rank_pattern = cfg.get("rank_pattern") if method.name == "adalora" else None
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    found_modules = {k[len(PEFT_PREFIX):].rsplit("." + t, 1)[0] for k in tensors for t in names.values()
                     if k.startswith(PEFT_PREFIX) and k.endswith("." + t)}
    missing_mod, extra_mod = sorted(set(layers) - found_modules), sorted(found_modules - set(layers))
    if missing_mod or extra_mod:
        raise MethodError(f"method.init_from: {folder / ADAPTER_WEIGHTS} adapts other modules than this run: "
                          f"missing {missing_mod[:3]}, extra {extra_mod[:3]} (target_modules differ?)")
    for n, layer in layers.items():
        for ours, theirs in names.items():
            key = f"{PEFT_PREFIX}{n}.{theirs}"
            if key not in tensors:
                raise MethodError(f"method.init_from: {folder / ADAPTER_WEIGHTS} has no {key}")
            sd[f"{n}.{ours}"] = tensors[key]
            used.add(key)
        if rank_pattern:
            _scatter_adalora(sd, n, layer, rank_pattern)
    for ours, theirs in PEFT_SHARED.get(method.name, {}).items():
        if theirs in tensors:
            sd[ours] = tensors[theirs]
            used.add(theirs)
    if method.name == "vera":
        sd["vera_prng_key"] = torch.tensor(int(cfg.get("projection_prng_key", 0)))
    own = model.state_dict()
    for k, v in tensors.items():
        if k in used:
            continue
        short = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        if short not in own:
            raise MethodError(f"method.init_from: {folder / ADAPTER_WEIGHTS} has {k}, which this model does not "
                              "have (another architecture or task head?)")
        sd[short] = v
    for k in method.extra_state_keys(model):  # kasa-only buffers: what apply derived from this base
        sd.setdefault(k, own[k])
    missing = sorted(set(method.adapter_state_dict_keys(model)) - set(sd))
    if missing:
        raise MethodError(f"method.init_from: {folder / ADAPTER_WEIGHTS} lacks {missing[:3]} (the task head? PEFT "
                          "saves it only when it is in modules_to_save)")
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise MethodError(f"method.init_from: {k} has shape {tuple(v.shape)} in {folder}, {tuple(own[k].shape)} "
                              "in this model")
    method.load_adapter_state_dict(model, {k: v.to(own[k].dtype) if k in own else v for k, v in sd.items()})
    return model


def _scatter_adalora(sd: dict[str, torch.Tensor], n: str, layer: nn.Module, rank_pattern: dict) -> None:
    """PEFT saves a pruned AdaLoRA with only the kept triplets: put them back at their places in ``init_r``."""
    pattern = next((v for k, v in rank_pattern.items() if k.removeprefix(PEFT_PREFIX).rsplit(".lora_E", 1)[0] == n),
                   None)
    if pattern is None:
        return
    keep = torch.tensor(pattern, dtype=torch.bool).view(-1)
    A, B, E = sd[f"{n}.lora_A"], sd[f"{n}.lora_B"], sd[f"{n}.lora_E"]
    if A.shape[0] == keep.numel():
        sd[f"{n}.lora_mask"] = keep
        return
    full_A = A.new_zeros(keep.numel(), A.shape[1])
    full_B = B.new_zeros(B.shape[0], keep.numel())
    full_E = E.new_zeros(keep.numel(), 1)
    full_A[keep], full_B[:, keep], full_E[keep] = A, B, E
    sd[f"{n}.lora_A"], sd[f"{n}.lora_B"], sd[f"{n}.lora_E"] = full_A, full_B, full_E
    sd[f"{n}.lora_mask"] = keep


def adapter_config_json(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "Adapter", "FORMATS", "FORMAT_NAMES", "IMPORTABLE", "PEFT_NAMES",
           "PEFT_PREFIX", "PEFT_SHARED", "check_format", "formats", "head_modules", "load_peft_adapter",
           "lora_adapter", "lora_factors", "peft_adapter", "read_peft_folder"]
