"""``kasa-eval RUN_DIR [overrides]``: score a finished run's checkpoint again, without training.

- ``kasa-eval RUN_DIR`` validates the run's best (or ``--checkpoint last``) checkpoint on its own dev set with the
  same LightningModule and ``Trainer.validate``: the metrics equal the ``results.json`` row of that epoch.
- ``kasa-eval RUN_DIR dataset=epistemic_reasoning dataset.max_eval=100`` scores it elsewhere: Hydra-style
  overrides of the run's own config (``group=option`` takes that group's file from ``conf/``, ``a.b=value`` sets
  a key, ``+a.b=value`` adds one); ``method`` and ``model`` are the checkpoint's and cannot change, except
  ``model.name_or_path`` / ``model.revision`` / ``model.dtype`` / ``model.attn_implementation`` (a moved copy
  of the same weights, another precision).
- ``kasa-eval RUN_DIR --lm-eval hellaswag,arc_easy`` runs lm-evaluation-harness (extra ``lm_eval``) on the
  in-memory merged model through its ``HFLM`` wrapper; ``--lm-eval-include DIR`` adds your own task YAMLs.
  ``benchmark.lm_eval.tasks=[...]`` does the same at the end of training (:class:`LmEvalCallback`).
- ``kasa-eval RUN_DIR --generation-backend vllm`` (causal-LM families, CUDA, vLLM installed) generates the dev set's
  answers with vLLM from the run's merged export instead of HF ``generate``
  (:mod:`kasa.training.vllm_backend`; what it refuses is checked before anything loads).

Each call writes ``eval-<name>.json`` beside ``results.json`` (``--name``; default ``<dataset>-<checkpoint>`` or
``lm_eval-<checkpoint>``); generation families write their generations under ``eval-<name>/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from kasa.errors import (
    EvalError,  # noqa: F401  (re-exported)
    )
from kasa.tasks.lm_eval import parse_tasks, require_lm_eval, run_lm_eval

GROUPS = ("model", "method", "dataset", "benchmark", "trainer", "logger")
# model keys that a checkpoint survives (the same weights elsewhere, another precision or attention kernel)
MODEL_KEYS = ("name_or_path", "revision", "dtype", "attn_implementation")


# ----------------------------------------------------------------------------------------------------
# overrides of a run's config
def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The run's config with Hydra-style ``overrides`` applied (see the module docstring); checked one by one.

    ``benchmark=NAME`` without ``dataset=`` also takes the dataset that benchmark's file selects (as kasa-train does).
    """
    import yaml

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    groups: dict[str, str] = {}
    keys: list[tuple[str, str, bool, str]] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.lstrip("+"):
            raise EvalError(f"override '{item}' is not key=value")
        add = key.startswith("+")
        key = key.lstrip("+")
        top = key.split(".")[0]
        if top == "method" or (top == "model" and (key == "model" or key.split(".", 1)[1] not in MODEL_KEYS)):
            raise EvalError(f"override '{item}': the checkpoint belongs to the run's method and model; kasa-eval "
                            f"changes only data, benchmark and trainer settings (and model.{{{','.join(MODEL_KEYS)}}})")
        if "." not in key and key in GROUPS:
            groups[key] = raw
        else:
            keys.append((key, raw, add, item))
    if groups:
        composed = _compose(groups)
        take = set(groups) | ({"dataset"} if "benchmark" in groups else set())
        for g in take:
            cfg[g] = OmegaConf.to_container(composed[g], resolve=True)
    for key, raw, add, item in keys:
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if not add and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise EvalError(f"override '{item}': the run's config has no key {key} (prefix + to add one)")
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _compose(groups: dict[str, str]) -> DictConfig:
    """kasa-train's config with these group choices (each group file's own defaults and interpolations applied)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from kasa.config import CONF_DIR, register

    register()

    for group, option in groups.items():
        available = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        if option not in available:
            raise EvalError(f"{group}={option} is unknown; {group} options: {' '.join(available)}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[f"{g}={o}" for g, o in groups.items()])
    except HydraException as exc:
        raise EvalError(f"{' '.join(f'{g}={o}' for g, o in groups.items())}: {' '.join(str(exc).split())[:200]}"
                        ) from None


# ----------------------------------------------------------------------------------------------------
def _dev_metrics(run, name: str) -> tuple[dict[str, float], dict[str, Any]]:
    import lightning as L

    from kasa.errors import ConfigError
    from kasa.training.strategy import build_strategy

    t = OmegaConf.to_container(run.cfg.trainer, resolve=True)
    for k in ("logger", "callbacks", "enable_checkpointing", "default_root_dir", "compile"):  # compile: kasa's key
        t.pop(k, None)
    if "strategy" in t:
        t["strategy"] = build_strategy(t["strategy"], run.model, t.get("accelerator", "auto"))
    try:
        trainer = L.Trainer(logger=False, enable_checkpointing=False,
                            default_root_dir=str(run.run_dir / f"eval-{name}"), **t)
    except ValueError as exc:
        raise ConfigError(f"trainer: {' '.join(str(exc).split())}") from None
    module = run.bundle.module
    trainer.validate(module, datamodule=run.bundle.datamodule, verbose=False)
    if not module.history:
        raise EvalError("validation produced no metrics (limit_val_batches=0?)")
    row = {k: v for k, v in module.history[-1].items() if k not in ("epoch", "step")}
    return row, dict(module.results_extra)


def evaluate_run(run_dir: str | Path, overrides: Sequence[str] = (), checkpoint: str | None = None,
                 name: str | None = None, lm_eval_tasks: Any = None, lm_eval_include: str | None = None,
                 num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int = 8,
                 generation_backend: str = "hf") -> dict[str, Any]:
    """Score a run folder's checkpoint again (see the module docstring); returns what ``eval-<name>.json`` holds."""
    import lightning
    import torch
    import transformers

    from kasa import __version__
    from kasa.runs.checkpoints import default_checkpoint, find_checkpoint
    from kasa.runs.load import load_run, run_config
    from kasa.training.vllm_backend import BACKENDS, check_vllm, vllm_dev_metrics

    t0 = time.time()
    run_dir = Path(run_dir)
    saved, cfg_file = run_config(run_dir)
    cfg = apply_overrides(saved, overrides)
    which = checkpoint or default_checkpoint(cfg)
    find_checkpoint(run_dir, which)
    tasks = parse_tasks(lm_eval_tasks)
    if generation_backend not in BACKENDS:
        raise EvalError(f"--generation-backend {generation_backend}: choose one of {' '.join(BACKENDS)}")
    if generation_backend == "vllm":
        if tasks:
            raise EvalError("--generation-backend vllm generates the dev set's answers; --lm-eval scores with "
                            "lm-evaluation-harness's HF model (leave one of them out)")
        check_vllm(cfg)
    if tasks:
        from kasa.tasks import get_task

        if not get_task(cfg.benchmark.get("family")).causal_lm:
            raise EvalError("--lm-eval scores causal LMs with lm-evaluation-harness; this run trained a classifier")
        require_lm_eval()
    name = name or (f"lm_eval-{which}" if tasks else f"{cfg.dataset.name}-{which}")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise EvalError(f"--name '{name}' must be letters, digits, '-', '_' or '.'")
    lightning.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    out: dict[str, Any] = {"name": name, "run_dir": str(run_dir), "config_file": cfg_file, "checkpoint": which,
                           "overrides": list(overrides)}
    if tasks:
        run = load_run(run_dir, which, cfg=cfg)
        out["lm_eval"] = run_lm_eval(run.model, run.tokenizer, tasks, method=run.method, num_fewshot=num_fewshot,
                                     limit=limit, batch_size=batch_size, include_path=lm_eval_include,
                                     seed=int(cfg.get("seed", 0)))
    else:
        run = load_run(run_dir, which, cfg=cfg, with_data=True)
        if generation_backend == "vllm":
            out["metrics"], extra = vllm_dev_metrics(run, name, config_file=cfg_file)
        else:
            out["metrics"], extra = _dev_metrics(run, name)
            if hasattr(run.bundle.module, "generate_ids"):  # a generation family
                extra["generation_backend"] = "hf"
        out.update({k: v for k, v in extra.items() if k != "lm_eval"})
        out["dataset"] = cfg.dataset.name
    out.update(checkpoint_file=run.checkpoint_path.name, epoch=run.epoch, config=OmegaConf.to_container(cfg),
               wall_time_s=time.time() - t0,
               versions={"kasa": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
                         "transformers": transformers.__version__, "python": sys.version.split()[0]})
    from kasa.runs.files import atomic_write_text

    atomic_write_text(run_dir / f"eval-{name}.json", json.dumps(out, indent=2, default=str) + "\n")
    return out

