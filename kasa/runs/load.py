"""A run folder back in memory: its config, its checkpoints, and the trained model rebuilt from them.

:func:`load_run` is the one loader that ``kasa-export``, ``kasa-eval`` and the spectra analysis share:
config (``results.json``, else the ``config.yaml`` a run writes when it starts, else Hydra's
``.hydra/config.yaml``) -> the backbone with its task head -> ``method.apply`` (KaSA re-truncates, PiSSA/MiLoRA
re-derive their residual; CorDA rebuilds from its saved factors, no calibration data needed) -> the adapter and
head from the checkpoint. Checkpoints are read with ``torch.load(weights_only=True)``: Lightning's checkpoint
(``state_dict``, ``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers`` and kasa's history) holds only
tensors, numbers, strings and containers, so nothing in it can execute code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kasa.errors import RunError, UnreadableFileError
from kasa.runs.checkpoints import adapter_state, default_checkpoint, find_checkpoint
from kasa.runs.files import CONFIG_FILE, RESULTS_FILE, load_torch, saved_config


def run_config(run_dir: str | Path) -> tuple[DictConfig, str]:
    """``(resolved config, file it came from)`` of a finished or interrupted run folder (:func:`saved_config`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    found = saved_config(run_dir)
    if found is None:
        raise RunError(f"{run_dir}: no {RESULTS_FILE} or {CONFIG_FILE} (an interrupted run that never wrote its "
                       "config, or not a kasa run folder)")
    return OmegaConf.create(found[0]), found[1]


@dataclass
class LoadedRun:
    """What :func:`load_run` rebuilt: ``model`` (method applied, adapter loaded, eval mode) and where it came from."""

    run_dir: Path
    cfg: DictConfig
    method: Any
    model: nn.Module
    tokenizer: Any
    checkpoint: str
    checkpoint_path: Path
    epoch: int | None
    bundle: Any = None  # the benchmark's TaskBundle (datamodule + LightningModule) when built with data
    extra: dict[str, Any] = field(default_factory=dict)


def _method_cfg(cfg: DictConfig, keep_removed: bool) -> dict[str, Any]:
    node = dict(OmegaConf.to_container(cfg.method, resolve=True))
    node["init_from"] = None  # the checkpoint holds the trained adapter; its PEFT start is not needed
    if keep_removed and node.get("name") == "kasa":
        node["keep_removed"] = True  # the removed triplets, re-derived from the original base (export_lora)
    return node


def load_run(run_dir: str | Path, checkpoint: str | None = None, *, cfg: DictConfig | None = None,
             with_data: bool = False, keep_removed: bool = False) -> LoadedRun:
    """Rebuild a run's trained model from its folder alone.

    ``checkpoint``: ``best`` | ``last`` | None (the one ``benchmark.selection`` reports). ``cfg``: the run's config
    with changes (``kasa-eval`` overrides); default the saved one. ``with_data``: build through the benchmark's
    builder (datamodule and LightningModule in ``bundle``, as training did), else only the model and tokenizer
    (no dataset access; the classifier's label count is read from the checkpoint). ``keep_removed``: KaSA keeps
    its removed triplets (re-derived from the original base when the run did not keep them), for ``export_lora``.
    """
    from kasa.methods import method_from_config
    from kasa.recipe import prepare_model
    from kasa.tasks import get_task

    run_dir = Path(run_dir)
    if cfg is None:
        cfg, _ = run_config(run_dir)
    which = checkpoint or default_checkpoint(cfg)
    path = find_checkpoint(run_dir, which)
    try:
        ckpt = load_torch(path)
    except UnreadableFileError as exc:
        raise RunError(str(exc)) from None
    state = adapter_state(ckpt, path)
    method = method_from_config(_method_cfg(cfg, keep_removed))
    torch.manual_seed(int(cfg.get("seed", 0)))  # inits that the checkpoint then overwrites, made reproducible
    task = get_task(cfg.benchmark.get("family"))
    bundle = None
    if with_data:
        bundle = task.build(cfg, method)
        model, tok = bundle.model, getattr(bundle.module, "tokenizer", None)
    else:
        model, tok = task.load_model(cfg, state)
    prepare_model(cfg, method, model, state=state, source=path)
    return LoadedRun(run_dir, cfg, method, model.eval(), tok, which, path, ckpt.get("epoch"), bundle)


__all__ = ["LoadedRun", "load_run", "run_config"]
