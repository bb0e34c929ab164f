"""One run config checked as a whole, before anything loads: :func:`validate` is the one entry point (kasa-train,
kasa-eval and the GPU check's dry mode call it). It runs the value checks of :mod:`kasa.config.checks`, then asks
the method registry, the benchmark family (:meth:`kasa.tasks.base.Task.check`) and the optimiser's own schema
(:class:`kasa.training.optim.OptimConfig`); every failure is one :class:`~kasa.errors.ConfigError` line.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from kasa.config.checks import check_config, is_causal_lm, model_config_json
from kasa.errors import ConfigError


def check_architecture(cfg: DictConfig) -> None:
    """A causal-LM benchmark family on a checkpoint whose ``config.json`` names no causal-LM architecture."""
    from kasa.tasks import tasks

    family = OmegaConf.select(cfg, "benchmark.family", default=None)
    name = OmegaConf.select(cfg, "model.name_or_path", default=None)
    task = tasks().get(family)
    if task is None or not task.causal_lm or not isinstance(name, str):
        return
    config = model_config_json(name, OmegaConf.select(cfg, "model.revision", default=None))
    if config is None or is_causal_lm(config) is not False:
        return
    archs = ", ".join(config.get("architectures") or [])
    model = OmegaConf.select(cfg, "model.name", default=name)
    raise ConfigError(f"benchmark.family={family} generates text and needs a causal LM, but model={model} is "
                      f"{archs} ({config.get('model_type', '?')}, an encoder); use a causal LM such as "
                      "model=smollm2, gpt2-medium or llama-3-8b")


def validate(cfg: DictConfig) -> None:
    """Every check of a run config that needs no model weights and no data, so bad input fails in a second, before
    anything loads: packages the trainer strategy needs, :func:`check_config`, the method and family registries, the
    family's own section (:meth:`kasa.tasks.base.Task.check`), the precision against the adapters' dtype, and
    ``benchmark.optim``. :func:`kasa.recipe.run` calls it first; kasa-eval and the GPU check's dry mode too."""
    from kasa.methods import REGISTRY
    from kasa.tasks import get_task
    from kasa.training.loggers import check_loggers
    from kasa.training.strategy import check_strategy

    check_strategy(cfg.get("trainer"))
    check_loggers(cfg.get("logger"))
    check_config(cfg)
    check_architecture(cfg)
    if cfg.method.name not in REGISTRY:
        raise ConfigError(f"unknown method '{cfg.method.name}'; known: {' '.join(sorted(REGISTRY))}")
    task = get_task(cfg.benchmark.get("family"))
    task.check(cfg)
    check_packing(cfg, task.causal_lm)
    precision = str((cfg.get("trainer") or {}).get("precision", ""))
    if precision in ("bf16-true", "16-true") and cfg.method.get("autocast_adapter_dtype", True) \
            and REGISTRY[cfg.method.name].wraps_targets:
        # Lightning's *-true precisions cast the whole module after apply: the float32 adapters with it
        raise ConfigError(f"trainer.precision={precision} casts the float32 adapter parameters to half precision; "
                          "load the model in half precision (model.dtype=bfloat16) with trainer.precision=32-true, "
                          "use bf16-mixed, or set method.autocast_adapter_dtype=false")
    o = check_optim(cfg.benchmark.get("optim"), task.label_smoothing)
    if o.loraplus_lr_ratio is not None and not REGISTRY[cfg.method.name].loraplus_b_params:
        with_b = " ".join(sorted(n for n, c in REGISTRY.items() if c.loraplus_b_params))
        raise ConfigError(f"benchmark.optim.loraplus_lr_ratio={o.loraplus_lr_ratio}: method {cfg.method.name} has no "
                          f"B-like up-projection for LoRA+ to speed up; methods that have one: {with_b}")
    check_early_stopping(cfg.benchmark.get("early_stopping"))
    compile_backend_of(OmegaConf.select(cfg, "trainer.compile", default=False))
    check_attn_implementation(OmegaConf.select(cfg, "model.attn_implementation", default=None))
    if task.causal_lm:
        check_generation(cfg.benchmark.get("generation"))


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")


def compile_backend_of(value: Any) -> str | None:
    """``trainer.compile`` -> the torch.compile backend, ``None`` when off: false/null off, true inductor, or a
    backend name of :data:`COMPILE_BACKENDS`; anything else is one line (validation and the recipe both ask here)."""
    if value is None or value is False:
        return None
    if value is True:
        return "inductor"
    if isinstance(value, str) and value in COMPILE_BACKENDS:
        return value
    raise ConfigError(f"trainer.compile={value!r}: use false, true (inductor) or a torch.compile backend: "
                      f"{' '.join(COMPILE_BACKENDS)}")


def attn_implementation_problem(name: Any) -> str | None:
    """Why ``model.attn_implementation=name`` cannot run here (``None``: it can, or it is unset)."""
    import importlib.util

    import torch

    if name is None:
        return None
    if name not in ATTN_IMPLEMENTATIONS:
        return f"is unknown; use null (transformers' default) or one of {' '.join(ATTN_IMPLEMENTATIONS)}"
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            return "needs the flash_attn package (pip install flash-attn), which is not installed"
        if not torch.cuda.is_available():
            return "needs a CUDA GPU, and none is visible"
    if name == "flex_attention" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"needs torch's flex attention (torch >= 2.5); this torch is {torch.__version__}"
    return None


def check_attn_implementation(name: Any) -> None:
    """``model.attn_implementation`` against what is installed here (one line)."""
    problem = attn_implementation_problem(name)
    if problem:
        raise ConfigError(f"model.attn_implementation={name}: {problem}")


def check_packing(cfg: DictConfig, causal_lm: bool) -> None:
    """``benchmark.packing`` / ``benchmark.group_by_length``: causal-LM families only, not both, and packing only on a
    model whose attention restarts at the packed examples (its ``config.json``'s ``model_type``, where at hand;
    :func:`kasa.tasks.base.causal_lm_bundle` checks the loaded model otherwise)."""
    from kasa.training.packing import packing_refusal

    packing = OmegaConf.select(cfg, "benchmark.packing", default=False)
    grouped = OmegaConf.select(cfg, "benchmark.group_by_length", default=False)
    for key, value in (("packing", packing), ("group_by_length", grouped)):
        if not isinstance(value, bool):
            raise ConfigError(f"benchmark.{key}={value!r}: use true or false")
        if value and not causal_lm:
            raise ConfigError(f"benchmark.{key}=true: only the causal-LM benchmarks (generation families) batch "
                              f"this way; family {cfg.benchmark.get('family')} does not")
    if packing and grouped:
        raise ConfigError("benchmark.packing=true and benchmark.group_by_length=true: pick one (packed rows are all "
                          "about benchmark.max_length long, there is nothing left to group)")
    if packing:
        name = OmegaConf.select(cfg, "model.name_or_path", default=None)
        config = model_config_json(name, OmegaConf.select(cfg, "model.revision", default=None)) \
            if isinstance(name, str) else None
        refusal = packing_refusal((config or {}).get("model_type"), OmegaConf.select(cfg, "model.name", default=name))
        if refusal:
            raise ConfigError(refusal)


def check_generation(node: Any) -> None:
    """``benchmark.generation`` builds a :class:`~kasa.training.causal_lm.GenerationSettings` (known keys only)."""
    from kasa.training.causal_lm import GenerationSettings

    try:
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        GenerationSettings(**(values or {}))
    except TypeError as exc:
        raise ConfigError(f"benchmark.generation: {exc}".replace("GenerationSettings.__init__() ", "")) from None


def check_early_stopping(node: Any) -> None:
    """``benchmark.early_stopping`` (absent: off) builds a :class:`~kasa.training.early_stopping.EarlyStoppingConfig`
    (known keys, allowed values)."""
    from kasa.training.early_stopping import EarlyStoppingConfig

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    try:
        EarlyStoppingConfig(**(values or {}))
    except TypeError as exc:  # an unknown key
        raise ConfigError(f"benchmark.early_stopping: {exc}".replace("EarlyStoppingConfig.__init__() ", "")) from None
    except ValueError as exc:
        raise ConfigError(f"benchmark.{exc}") from None


def check_optim(optim_cfg: Any, label_smoothing: bool = True) -> Any:
    """``benchmark.optim`` builds an :class:`~kasa.training.optim.OptimConfig` (known keys, allowed values) and
    returns it; ``label_smoothing``: whether the family's loss takes it (a classifier's does not)."""
    from kasa.training.optim import OptimConfig

    values = OmegaConf.to_container(optim_cfg, resolve=True) if isinstance(optim_cfg, DictConfig) else optim_cfg
    try:
        o = OptimConfig(**(values or {}))
    except TypeError as exc:  # an unknown key
        raise ConfigError(f"benchmark.optim: {exc}".replace("OptimConfig.__init__() ", "")) from None
    except ValueError as exc:
        raise ConfigError(f"benchmark.{exc}") from None
    if o.label_smoothing and not label_smoothing:
        raise ConfigError(f"benchmark.optim.label_smoothing={o.label_smoothing}: only the causal-LM benchmarks "
                          "use it; set 0.0")
    return o
