"""Quantised frozen bases (``model.quantization: null | nf4 | int8``), the QLoRA setting for 7-13B models on one GPU.

Every ``nn.Linear`` of the frozen base is quantised except the LM head and the task heads (the layers a method
trains); embeddings, norms and the method's own parameters keep their dtype, so adapters stay float32 (or the
base dtype with ``method.autocast_adapter_dtype=false``) on top of the quantised weights. Two backends:

- ``bitsandbytes`` (CUDA): ``Linear4bit`` NF4 with double-quantised statistics (QLoRA) or ``Linear8bitLt``
  (LLM.int8, threshold 6.0); the layer is swapped in with the full-precision weight and packs it when Lightning
  moves the model to the GPU.
- ``torchao`` (plain PyTorch, runs on CPU; what the tests use): the weight becomes torchao's ``NF4Tensor``
  (blocks of 64 with absmax scales, themselves int8 in blocks of 256) or a weight-only per-row ``Int8Tensor``.
  ``F.linear`` on them dequantises to the input's dtype; gradients reach the inputs, never the weight.

``backend=auto``: bitsandbytes where CUDA and the package are present, else torchao.

Order (:func:`quantize_for_method`): methods that decompose the weight (KaSA's truncation, PiSSA, MiLoRA, CorDA,
SARA: :attr:`kasa.methods.PeftMethod.decomposes_weights`) are applied to the FULL-PRECISION model first and
the residual they write (KaSA's ``W_world``, PiSSA's ``W - B0 A0``) is then quantised, so the SVD never reads
packed values and the truncation cache and ``keep_removed`` work as without quantisation. Every other method is
applied on top of the already quantised base, as QLoRA and HF PEFT do (DoRA's magnitude is then the norm of the
weight it actually multiplies). A decomposing method given an already quantised layer refuses with one line
(:meth:`kasa.methods.PeftMethod.apply`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kasa.errors import QuantizationError  # noqa: F401  (re-exported)
from kasa.methods import dense_linear, dequantize_bases, dequantized_weight, is_quantized, match_target, quantized_kind

QUANTIZATIONS = ("nf4", "int8")
BACKENDS = ("auto", "bitsandbytes", "torchao")
NF4_BLOCK_SIZE = 64  # weights per absmax scale (QLoRA's and torchao's default)
NF4_SCALER_BLOCK_SIZE = 256  # scales per int8-quantised group of scales (double quantisation)
INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold (bitsandbytes' recommended value)
SKIP_ALWAYS = ("lm_head",)



def check_quantization(scheme: Any, backend: Any = "auto") -> None:
    """Value-only checks of ``model.quantization`` / ``model.quantization_backend`` (one line each)."""
    if scheme is not None and scheme not in QUANTIZATIONS:
        raise QuantizationError(f"model.quantization={scheme!r} is unknown; use null, {' or '.join(QUANTIZATIONS)}")
    if backend not in BACKENDS:
        raise QuantizationError(f"model.quantization_backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")


def _has(module_name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module_name) is not None


def resolve_backend(scheme: str, backend: str = "auto", cuda: bool | None = None) -> str:
    """The backend that will quantise: ``bitsandbytes`` or ``torchao``; raises where the one asked cannot run."""
    check_quantization(scheme, backend)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if backend == "auto":
        backend = "bitsandbytes" if cuda and _has("bitsandbytes") else "torchao"
    if backend == "bitsandbytes":
        if not cuda:
            raise QuantizationError("model.quantization_backend=bitsandbytes needs a CUDA GPU; on CPU use "
                                    "model.quantization_backend=torchao (or auto)")
        if not _has("bitsandbytes"):
            raise QuantizationError("model.quantization_backend=bitsandbytes: the package is not installed "
                                    "(pip install 'kasa[quant]')")
    elif not _has("torchao"):
        raise QuantizationError(f"model.quantization={scheme} with torchao: the package is not installed "
                                "(pip install 'kasa[quant]')")
    return backend


def torchao():
    """``torchao.quantization`` (its import's CUDA-library warnings are filtered, see ``kasa/__init__.py``)."""
    import torchao.quantization as q

    return q


# ----------------------------------------------------------------------------------------------------
# quantising a model

def nf4_tensor(weight: torch.Tensor, name: str = ""):
    """torchao's NF4 of ``weight`` (the exact function the model quantisation uses: tests compare against it).

    Blocks of :data:`NF4_BLOCK_SIZE` weights; their scales are quantised in groups of :data:`NF4_SCALER_BLOCK_SIZE`,
    or of the largest power of two dividing the number of blocks where that does not divide it (small layers).
    """
    import math

    n = weight.numel()
    if n % NF4_BLOCK_SIZE:
        raise QuantizationError(f"model.quantization=nf4: '{name or tuple(weight.shape)}' has {n} weights, not a "
                                f"multiple of the NF4 block size {NF4_BLOCK_SIZE}")
    scaler_block = math.gcd(n // NF4_BLOCK_SIZE, NF4_SCALER_BLOCK_SIZE)
    return torchao().to_nf4(weight.detach().contiguous(), NF4_BLOCK_SIZE, scaler_block)


def _quantize_torchao(module: nn.Linear, scheme: str, name: str = "") -> None:
    if scheme == "nf4":
        module.weight = nn.Parameter(nf4_tensor(module.weight, name), requires_grad=False)
        return
    q = torchao()
    q.quantize_(module, q.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: m is module)
    module.weight.requires_grad_(False)


def _bnb_layer(module: nn.Linear, scheme: str, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    w = module.weight.detach()
    has_bias = module.bias is not None
    if scheme == "nf4":
        layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=has_bias, compute_dtype=compute_dtype,
                                  compress_statistics=True, quant_type="nf4", device=w.device)
        layer.weight = bnb.nn.Params4bit(w.to(compute_dtype), requires_grad=False, blocksize=NF4_BLOCK_SIZE,
                                         compress_statistics=True, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=INT8_THRESHOLD, device=w.device)
        layer.weight = bnb.nn.Int8Params(w.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    if has_bias:
        layer.bias = nn.Parameter(module.bias.detach().to(compute_dtype), requires_grad=False)
    return layer.train(module.training)


def quantizable(name: str, module: nn.Module, skip: list[str] | tuple[str, ...] = ()) -> bool:
    """A plain ``nn.Linear`` (not a subclass: bitsandbytes' layers are already quantised) whose name is not a head
    (``skip`` entries match as ``match_target`` does)."""
    if type(module) is not nn.Linear or is_quantized(module):
        return False
    return not match_target(name, list(skip) + list(SKIP_ALWAYS))


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, backend: str = "auto", skip: list[str] | tuple[str, ...] = (),
                   compute_dtype: torch.dtype | None = None) -> list[str]:
    """Quantise every frozen ``nn.Linear`` of ``model`` in place (wrapped ones inside adapters too); returns their
    names. ``skip``: head names (never quantised, nor ``lm_head``); ``compute_dtype`` (bitsandbytes): the dtype
    its kernels compute in (default: the weights' floating dtype)."""
    backend = resolve_backend(scheme, backend)
    names = [n for n, m in model.named_modules() if n and quantizable(n, m, skip)]
    if not names:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Conv1D" in type(m).__name__})
        hint = f" (its projections are {kinds[0]} layers, which are not quantised)" if kinds else ""
        raise QuantizationError(f"model.quantization={scheme}: {type(model).__name__} has no nn.Linear layer to "
                                f"quantise outside the heads{hint}")
    for n in names:
        module = model.get_submodule(n)
        if backend == "torchao":
            _quantize_torchao(module, scheme, n)
        else:
            parent_name, _, child = n.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            dtype = compute_dtype or module.weight.dtype
            setattr(parent, child, _bnb_layer(module, scheme, dtype))
    return names


@torch.no_grad()
def dequantize_model(model: nn.Module) -> list[str]:
    """Make every quantised linear layer of ``model`` dense again (its dequantised weight, in the compute dtype), in
    place; returns their names. For a merged model that leaves kasa as a plain checkpoint (``kasa-export --format
    merged --dequantize``): the adapters' bases are dense after ``merge(dequantize=True)``, the others after this."""
    names = [n for n, m in model.named_modules() if n and is_quantized(m) and hasattr(m, "weight")]
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, dense_linear(model.get_submodule(n)))
    return names


def quantize_for_method(model: nn.Module, method: Any, scheme: str | None, backend: str = "auto",
                        stage: str = "after") -> list[str]:
    """Quantise ``model`` at the right moment for ``method``: call with ``stage="before"`` ahead of
    ``method.apply`` and ``stage="after"`` once it (and any adapter loading) is done. Methods that decompose the
    weight quantise after (the residual), the others before (the adapter sees the quantised base)."""
    if not scheme:
        return []
    if stage not in ("before", "after"):
        raise ValueError(f"stage={stage!r}: use 'before' or 'after'")
    if getattr(method, "trains_base_weights", False):
        raise QuantizationError(f"method '{method.name}' trains the base model's own weights, which a quantised base "
                                "cannot update; use model.quantization=null")
    after = bool(getattr(method, "decomposes_weights", False))
    if (stage == "after") != after:
        return []
    return quantize_model(model, scheme, backend, skip=method.heads(model))


__all__ = ["QUANTIZATIONS", "BACKENDS", "QuantizationError", "check_quantization", "resolve_backend", "is_quantized",
           "quantized_kind", "dequantized_weight", "dequantize_bases", "dequantize_model", "quantize_model",
           "quantize_for_method",
           "nf4_tensor", "quantizable"]
