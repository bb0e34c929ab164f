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

from .safe_io import UnreadableFileError, load_torch, read_json

RESULTS_FILE = "results.json"
CONFIG_FILES = ("config.yaml", ".hydra/config.yaml")
CHECKPOINTS = ("best", "last")


class RunError(ValueError):
    """A run folder that cannot be read back: no config, no such checkpoint, a checkpoint of another config."""


def run_config(run_dir: str | Path) -> tuple[DictConfig, str]:
    """``(resolved config, file it came from)`` of a finished or interrupted run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    res = run_dir / RESULTS_FILE
    if res.is_file():
        cfg = read_json(res).get("config")
        if not isinstance(cfg, dict):
            raise RunError(f"{res}: has no 'config' (not written by kasa-train?)")
        return OmegaConf.create(cfg), RESULTS_FILE
    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as exc:  # noqa: BLE001 -- any unparsable file: one line naming it
                raise RunError(f"{path}: does not parse as a config ({type(exc).__name__})") from None
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), name
    raise RunError(f"{run_dir}: no {RESULTS_FILE} or config.yaml (an interrupted run that never wrote its config, "
                   "or not a kasa run folder)")


def find_checkpoint(run_dir: str | Path, which: str) -> Path:
    """``checkpoints/last.ckpt`` or the best epoch's ``checkpoints/best-*.ckpt`` (the newest, if several)."""
    if which not in CHECKPOINTS:
        raise RunError(f"checkpoint='{which}' is unknown; choose one of {list(CHECKPOINTS)}")
    ckpt_dir = Path(run_dir) / "checkpoints"
    found = [ckpt_dir / "last.ckpt"] if which == "last" else list(ckpt_dir.glob("best-*.ckpt"))
    found = [p for p in found if p.is_file()]
    if not found:
        raise RunError(f"{ckpt_dir}: no {which} checkpoint ({'last.ckpt' if which == 'last' else 'best-*.ckpt'})")
    return max(found, key=lambda p: p.stat().st_mtime)


def default_checkpoint(cfg: DictConfig) -> str:
    """The checkpoint a run's reported metrics come from: ``benchmark.selection`` (best unless ``last``)."""
    return "last" if (cfg.get("benchmark") or {}).get("selection") == "last" else "best"


def adapter_state(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The adapter + head tensors of a Lightning checkpoint (kasa saves them under ``model.``)."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise RunError(f"{path}: no state_dict (not a kasa checkpoint)")
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


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


def _num_labels(state: dict[str, torch.Tensor], heads: list[str]) -> int:
    """The classifier's output size, read off the saved head (its last projection has the fewest rows)."""
    from .methods import match_target

    def under_head(key: str) -> bool:
        parts = key.split(".")[:-1]
        return any(match_target(".".join(parts[:i]), heads) for i in range(1, len(parts) + 1))

    outs = [v.shape[0] for k, v in state.items() if k.endswith(".weight") and v.dim() == 2 and under_head(k)]
    if not outs:
        raise RunError(f"the checkpoint holds no task head under {heads}: cannot tell the number of labels")
    return min(outs)


def build_model(cfg: DictConfig, method: Any, state: dict[str, torch.Tensor]) -> tuple[nn.Module, Any]:
    """The backbone with the head the run trained, without its data: ``(model, tokenizer)``."""
    from .methods import HEAD_PRESETS
    from .models import load_model, load_tokenizer

    m = cfg.model
    tok = load_tokenizer(m.name_or_path, revision=m.get("revision"))
    if cfg.benchmark.family == "classification":
        heads = method.config.modules_to_save or sorted({h for hs in HEAD_PRESETS.values() for h in hs})
        model = load_model(m.name_or_path, task="seq_cls", num_labels=_num_labels(state, heads), dtype=m.get("dtype"),
                           revision=m.get("revision"))
    else:
        model = load_model(m.name_or_path, task="causal_lm", dtype=m.get("dtype"), revision=m.get("revision"),
                           attn_implementation=m.get("attn_implementation"))
    return model, tok


def apply_and_load(method: Any, model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                   quantization: str | None = None, backend: str = "auto") -> nn.Module:
    """``method.apply`` then the saved adapter; a checkpoint that does not fit the model is named in one line.
    ``quantization``: the run's ``model.quantization``, applied at the moment training applied it."""
    from .models.quantize import quantize_for_method

    quantize_for_method(model, method, quantization, backend, stage="before")
    _apply_and_load(method, model, state, path)
    quantize_for_method(model, method, quantization, backend, stage="after")
    return model


def _apply_and_load(method: Any, model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    from .methods import MethodError

    try:
        if getattr(method, "needs_calibration", False):  # CorDA: its saved initial factors replace calibration
            method.apply(model, adapter_state_dict=state)
            return model
        method.apply(model)
        if getattr(method.config, "keep_removed", False):  # removed triplets the run did not keep: apply's own
            own = model.state_dict()
            for k in method.extra_state_keys(model):
                state.setdefault(k, own[k])
        method.load_adapter_state_dict(model, state)
    except (MethodError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"{path} does not fit the model the run config builds: {first[:300]}") from None
    return model


def load_run(run_dir: str | Path, checkpoint: str | None = None, *, cfg: DictConfig | None = None,
             with_data: bool = False, keep_removed: bool = False) -> LoadedRun:
    """Rebuild a run's trained model from its folder alone.

    ``checkpoint``: ``best`` | ``last`` | None (the one ``benchmark.selection`` reports). ``cfg``: the run's config
    with changes (``kasa-eval`` overrides); default the saved one. ``with_data``: build through the benchmark's
    builder (datamodule and LightningModule in ``bundle``, as training did), else only the model and tokenizer
    (no dataset access; the classifier's label count is read from the checkpoint). ``keep_removed``: KaSA keeps
    its removed triplets (re-derived from the original base when the run did not keep them), for ``export_lora``.
    """
    from .methods import method_from_config

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
    bundle = None
    if with_data:
        from .benchmarks import BENCHMARKS

        bundle = BENCHMARKS[cfg.benchmark.family](cfg, method)
        model, tok = bundle.model, getattr(bundle.module, "tokenizer", None)
    else:
        model, tok = build_model(cfg, method, state)
    apply_and_load(method, model, state, path, cfg.model.get("quantization"),
                   cfg.model.get("quantization_backend", "auto"))
    return LoadedRun(run_dir, cfg, method, model.eval(), tok, which, path, ckpt.get("epoch"), bundle)


__all__ = ["CHECKPOINTS", "LoadedRun", "RunError", "apply_and_load", "build_model", "default_checkpoint",
           "find_checkpoint", "load_run", "run_config"]
