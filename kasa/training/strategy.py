"""``trainer.strategy`` as Lightning takes it: packages a strategy needs, FSDP wrap policies resolved on the model,
and the launch combinations that cannot work refused in one line."""

from __future__ import annotations

import importlib.util
from typing import Any

import hydra
from omegaconf import DictConfig

from kasa.errors import ConfigError


def _strategy_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (dict, DictConfig)):
        return str(spec.get("_target_", ""))
    return type(spec).__name__ if spec is not None else "auto"


def check_strategy(trainer_cfg: Any) -> None:
    """Packages a ``trainer.strategy`` needs that kasa does not install: fail in a second, in one line."""
    name = _strategy_name((trainer_cfg or {}).get("strategy", "auto"))
    if "deepspeed" in name.lower() and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={name} needs DeepSpeed, which kasa does not install: "
                          "`pip install deepspeed` on a CUDA machine (see conf/trainer/deepspeed.yaml)")


def block_classes(model: Any, spec: Any) -> set[type]:
    """Module classes for an FSDP wrap / activation-checkpointing policy.

    ``transformer_blocks``: the model's repeated blocks, from transformers' ``_no_split_modules`` or, where a
    model does not declare them (BERT), the element class of its longest ``nn.ModuleList``. Otherwise a list of
    class names found in the model (``LlamaDecoderLayer``) or dotted import paths.
    """
    from torch import nn

    in_model = {type(m).__name__: type(m) for m in model.modules()}
    if spec == "transformer_blocks":
        names = list(getattr(model, "_no_split_modules", None) or [])
        if not names:
            lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
                     and len({type(c) for c in m}) == 1]
            if not lists:
                raise ConfigError(f"transformer_blocks: {type(model).__name__} has no repeated blocks to wrap; "
                                  "name the classes (auto_wrap_policy: [MyBlock])")
            names = [type(max(lists, key=len)[0]).__name__]
    else:
        names = [spec] if isinstance(spec, str) else list(spec)
    out: set[type] = set()
    for n in names:
        if n in in_model:
            out.add(in_model[n])
        elif "." in n:
            out.add(hydra.utils.get_class(n))
        else:
            raise ConfigError(f"wrap policy class '{n}' is not a module class of {type(model).__name__}")
    return out


def build_strategy(spec: Any, model: Any) -> Any:
    """``trainer.strategy`` as Lightning takes it: a registry name (``ddp``, ``deepspeed_stage_3``) passes
    through; a mapping with ``_target_`` (conf/trainer/fsdp.yaml) is instantiated, its ``auto_wrap_policy`` and
    ``activation_checkpointing_policy`` resolved by :func:`block_classes` on the model the method was applied to.
    """
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if spec.get(key) is not None:
            spec[key] = block_classes(model, spec[key])
    return hydra.utils.instantiate(spec, _convert_="all")


def check_launch(trainer: Any) -> None:
    """Lightning's DDP launcher starts the extra processes by re-running this command line; under a Hydra
    multirun (``-m``) every child would re-run the whole sweep. Refused: use hydra/launcher=slurm (SLURM starts
    the processes), ``torchrun``, or one ``kasa-train`` per point (W&B agents; experiments/README.md)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    strategy = trainer.strategy
    if (isinstance(getattr(strategy, "launcher", None), _SubprocessScriptLauncher) and trainer.num_devices > 1
            and not strategy.cluster_environment.creates_processes_externally):
        raise ConfigError(f"trainer.devices={trainer.num_devices} with a local multirun (-m): Lightning would "
                          "re-run the whole sweep in every extra process; run points one by one, under "
                          "hydra/launcher=slurm, or with torchrun")
