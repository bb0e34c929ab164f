"""``trainer.strategy`` as Lightning takes it: packages a strategy needs, FSDP wrap policies resolved on the model,
FSDP on CPU processes (gloo), and the launch combinations that cannot work refused in one line."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Any, Iterator

import hydra
import torch
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig

from kasa.errors import ConfigError

FSDP_TARGETS = ("lightning.pytorch.strategies.FSDPStrategy", "lightning.pytorch.strategies.fsdp.FSDPStrategy")


def _strategy_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (dict, DictConfig)):
        return str(spec.get("_target_", ""))
    return type(spec).__name__ if spec is not None else "auto"


def on_cpu(accelerator: Any) -> bool:
    """Whether ``trainer.accelerator`` puts the processes on CPUs (``auto``: where CUDA is not available)."""
    if accelerator == "auto":
        return not torch.cuda.is_available()
    return str(accelerator) == "cpu"


def _is_fsdp(spec: Any) -> bool:
    name = _strategy_name(spec)
    return name in FSDP_TARGETS or name.lower().startswith("fsdp") or isinstance(spec, FSDPStrategy)


def check_strategy(trainer_cfg: Any) -> None:
    """What a ``trainer.strategy`` cannot do here, refused in a second and in one line, before anything loads:
    DeepSpeed missing, or present without CUDA; FSDP with a checkpoint format or clipping kasa or Lightning
    refuses, and on CPU processes what torch's FSDP refuses or silently changes there (:func:`_check_fsdp`)."""
    t = trainer_cfg or {}
    spec = t.get("strategy", "auto")
    name = _strategy_name(spec)
    accelerator = t.get("accelerator", "auto")
    if "deepspeed" in name.lower():
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"trainer.strategy={name} needs DeepSpeed, which kasa does not install: "
                              "`pip install deepspeed` on a CUDA machine (see conf/trainer/deepspeed.yaml)")
        if on_cpu(accelerator) or not torch.cuda.is_available():
            raise ConfigError(f"trainer.strategy={name} needs CUDA GPUs (trainer.accelerator={accelerator}, CUDA "
                              f"available: {torch.cuda.is_available()}): kasa does not support DeepSpeed's CPU path "
                              "(its optimisers and ZeRO build CUDA ops); on CPUs use trainer=ddp or trainer=fsdp "
                              "trainer.accelerator=cpu")
    if _is_fsdp(spec):
        _check_fsdp(spec, t, on_cpu(accelerator))


def _check_fsdp(spec: Any, t: Any, cpu: bool) -> None:
    opts = spec if isinstance(spec, (dict, DictConfig)) else {}
    if opts.get("state_dict_type", "full") != "full":
        raise ConfigError(f"trainer.strategy.state_dict_type={opts.get('state_dict_type')}: kasa's checkpoints "
                          "hold the adapter only, gathered from FSDP's full state dict; keep state_dict_type=full")
    if t.get("gradient_clip_val") and (t.get("gradient_clip_algorithm") or "norm") == "norm":
        raise ConfigError("trainer.gradient_clip_val under FSDP: Lightning cannot clip gradients by norm with FSDP; "
                          "set trainer.gradient_clip_algorithm=value or drop the clipping")
    if not cpu:
        return
    if not isinstance(spec, (dict, DictConfig)):
        raise ConfigError(f"trainer.strategy={_strategy_name(spec)} on CPU: Lightning's FSDP registry names need "
                          "GPUs; use trainer=fsdp trainer.accelerator=cpu (conf/trainer/fsdp.yaml)")
    # measured with 2 CPU processes (tests/test_fsdp.py): what torch's FSDP fails at, or silently changes, on CPU
    precision = str(t.get("precision", "32-true"))
    if precision not in ("32-true", "32"):
        raise ConfigError(f"trainer.precision={precision} with FSDP on CPU: Lightning's FSDP precision autocasts on "
                          "CUDA only, so the half-precision sharded base meets the float32 adapters and head "
                          "unconverted (and 16-mixed's gradient scaler is CUDA-only); use trainer.precision=32-true")
    if opts.get("cpu_offload"):
        raise ConfigError("trainer.strategy.cpu_offload=true with FSDP on CPU: the parameters already live in CPU "
                          "memory (torch fails pinning them without an accelerator); set "
                          "trainer.strategy.cpu_offload=false")
    sharding = str(opts.get("sharding_strategy") or "FULL_SHARD").upper()
    if sharding == "NO_SHARD":
        raise ConfigError("trainer.strategy.sharding_strategy=NO_SHARD with FSDP on CPU: torch fails gathering its "
                          "full state dict for the checkpoint; NO_SHARD is data parallel, use trainer=ddp")
    if "HYBRID" in sharding:
        raise ConfigError(f"trainer.strategy.sharding_strategy={sharding} with FSDP on CPU: torch sizes its node "
                          "groups by the accelerator count (1 on CPU), falls back to NO_SHARD within each process "
                          "and never syncs the ranks' gradients; use FULL_SHARD or SHARD_GRAD_OP")


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


def build_strategy(spec: Any, model: Any, accelerator: Any = "auto") -> Any:
    """``trainer.strategy`` as Lightning takes it: a registry name (``ddp``, ``deepspeed_stage_3``) passes
    through; a mapping with ``_target_`` (conf/trainer/fsdp.yaml) is instantiated, its ``auto_wrap_policy`` and
    ``activation_checkpointing_policy`` resolved by :func:`block_classes` on the model the method was applied to.

    FSDP (the mapping): on CPU processes (``accelerator`` cpu, or auto without CUDA) the strategy is
    :class:`CPUFSDPStrategy`, on CUDA Lightning's ``FSDPStrategy``. A PEFT method's trainable parameters (the
    adapters and the task head) are left out of FSDP's sharding (``ignored_states``) and kept whole on every
    rank, their gradients averaged as DDP does (:func:`average_replicated_gradients`): FSDP gathers a unit's
    parameters only for that unit's forward and backward and frees them after (FULL_SHARD), so what a method
    computes from its adapters outside the forward (KaSA's L2/L3 regulariser in the training step, AdaLoRA's
    per-step budget, the adapter checkpoint) would otherwise read 1-D shards. The frozen base, the memory FSDP
    is there for, is sharded as before. FFT (every parameter trains) leaves nothing out.
    """
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if spec.get(key) is not None:
            spec[key] = block_classes(model, spec[key])
    fsdp = spec.get("_target_") in FSDP_TARGETS
    if fsdp and on_cpu(accelerator):
        spec["_target_"] = f"{CPUFSDPStrategy.__module__}.{CPUFSDPStrategy.__qualname__}"
    strategy = hydra.utils.instantiate(spec, _convert_="all")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if fsdp and 0 < len(trainable) < len(list(model.parameters())) and not (
            strategy.kwargs.get("ignored_states") or strategy.kwargs.get("ignored_modules")):
        strategy.kwargs["ignored_states"] = trainable  # set after instantiate: no config copy of the tensors
    return strategy


def replicated_parameters(strategy: Any) -> list[torch.nn.Parameter]:
    """The parameters FSDP leaves whole on every rank (:func:`build_strategy`'s ``ignored_states``)."""
    if not isinstance(strategy, FSDPStrategy):
        return []
    return [p for p in strategy.kwargs.get("ignored_states") or () if isinstance(p, torch.nn.Parameter)]


def place_replicated_parameters(strategy: Any) -> None:
    """FSDP moves the parameters it manages to the process's device, not the ones it leaves out: move those
    (CUDA; on CPU processes they are already there). Called before FSDP wraps the model, so the optimiser,
    built after, holds them where they train."""
    for p in replicated_parameters(strategy):
        if p.device != strategy.root_device:
            p.data = p.data.to(strategy.root_device)


def average_replicated_gradients(strategy: Any) -> None:
    """Average the gradients of :func:`replicated_parameters` over the ranks, once per optimiser step (after
    gradient accumulation, before clipping and the step), as DDP averages them. A parameter without a gradient
    this step is skipped: kasa's methods leave the same ones unused on every rank (DyLoRA's rank, AdaLoRA's
    mask follow the step and the synced gradients)."""
    params = [p for p in replicated_parameters(strategy) if p.grad is not None]
    if strategy.world_size < 2 or not params or not torch.distributed.is_initialized():
        return
    groups: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        torch.distributed.all_reduce(flat)  # SUM (gloo has no AVG)
        flat /= strategy.world_size
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
            offset += p.grad.numel()


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


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU processes (gloo): ``trainer=fsdp trainer.accelerator=cpu``.

    Lightning refuses FSDP without a GPU only for its own class (``type(strategy) is FSDPStrategy``) and passes
    torch's FSDP ``device_id=None`` on CPU, which torch then refuses ("FSDP needs a non-CPU accelerator device"):
    this subclass wraps the model with ``device_id=cpu``. Full state dicts (checkpoints, their resume) are gathered
    without ``offload_to_cpu``: on CPU, torch's offload "moves" the gathered parameters onto the device they
    are on (no copy), then frees them, and the checkpoint reads freed memory (a segfault). Everything else is
    Lightning's.
    """

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy,
                                             device_id=torch.device("cpu"), **self.kwargs)
        # Lightning's own steps on the wrapped model (metrics to the device, activation checkpointing)
        kwargs, self.kwargs = self.kwargs, {k: v for k, v in self.kwargs.items() if k != "auto_wrap_policy"}
        try:
            return super()._setup_model(model)
        finally:
            self.kwargs = kwargs

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _full_state_in_place():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        with _full_state_in_place():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with _full_state_in_place():
            return super().load_checkpoint(*args, **kwargs)


@contextmanager
def _full_state_in_place() -> Iterator[None]:
    """Inside, Lightning's FSDP full-state-dict context gathers without ``offload_to_cpu`` (see
    :class:`CPUFSDPStrategy`)."""
    from lightning.pytorch.strategies import fsdp as lightning_fsdp
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    def context(module: Any, world_size: int, rank0_only: bool = True) -> Any:
        return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    lightning_context = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = context
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = lightning_context
