"""Hydra entry point: ``kasa-train [overrides]`` (also ``python -m kasa.train``).

Composes model / method / dataset / benchmark / trainer / logger, trains on one Lightning loop and
writes ``results.json`` (final and best metrics, resolved config, parameter counts, wall time,
versions) into the run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

CONF_DIR = Path(os.environ.get("KASA_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))


class ConfigError(ValueError):
    """A run configuration that cannot work; raised before any training starts."""


def _wandb_mode(requested: str) -> str:
    """``auto``: online only with an API key (env or netrc); never block a run on a login prompt."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers: list = []
    if cfg.logger.get("csv", True):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
    wb = cfg.logger.get("wandb")
    if wb:
        mode = _wandb_mode(wb.get("mode", "auto"))
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            loggers.append(WandbLogger(project=wb.get("project", "kasa"), entity=wb.get("entity"),
                                       group=wb.get("group"), tags=list(wb.get("tags") or []),
                                       name=cfg.get("run_name"), save_dir=str(run_dir), offline=mode == "offline",
                                       config=OmegaConf.to_container(cfg, resolve=True)))
        except Exception as exc:  # a logger must never cost a run
            print(f"[kasa] W&B logger disabled: {exc}", file=sys.stderr)
    return loggers


def validate(cfg: DictConfig) -> None:
    """Name checks that need no model or data, so bad input fails in a second, before any loading."""
    from .data.classification import SOURCES
    from .families import FAMILIES
    from .methods import REGISTRY

    if cfg.method.name not in REGISTRY:
        raise ConfigError(f"unknown method '{cfg.method.name}'; known: {' '.join(sorted(REGISTRY))}")
    fam = cfg.benchmark.get("family")
    if fam not in FAMILIES:
        raise ConfigError(f"unknown benchmark family '{fam}'; known: {sorted(FAMILIES)}")
    if fam == "classification" and cfg.dataset.source not in SOURCES:
        raise ConfigError(f"unknown dataset source '{cfg.dataset.source}'; known: {sorted(SOURCES)}")


def method_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kw = OmegaConf.to_container(cfg.method, resolve=True)
    kw.pop("name")
    return kw


def run(cfg: DictConfig, run_dir: str | Path | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Train one configuration and return what was written to ``results.json``.

    ``callbacks``: extra Lightning callbacks (profilers, custom logging, ...).
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .families import FAMILIES
    from .methods import build_method, count_parameters
    from .module import StepSeed

    t0 = time.time()
    validate(cfg)
    key = config_hash(cfg)
    if run_dir is None and cfg.get("sweep_dir"):
        run_dir = Path(cfg.sweep_dir) / f"{cfg.run_name}-{key}"
    run_dir = Path(run_dir or hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    auto = cfg.get("resume") == "auto" or (cfg.get("sweep_dir") and cfg.get("resume") is None)
    if auto:
        done = finished_results(run_dir, key)
        if done is not None:
            print(f"[kasa] skipped: {run_dir / 'results.json'} already holds this config's results")
            return {**done, "skipped": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg.method.name, **method_kwargs(cfg))  # hyper-parameter errors before loading
    L.seed_everything(cfg.seed, verbose=False)

    d, b = cfg.dataset, cfg.benchmark
    bundle = FAMILIES[b.family](cfg, method)
    model, module = bundle.model, bundle.module
    if getattr(method, "needs_calibration", False):
        method.apply(model, calibration=bundle.calibration_batches())  # CorDA: input covariances
    else:
        method.apply(model)
    trainable, total = count_parameters(model)
    adapter_params = method.trainable_parameter_count(model)

    ckpt_dir = run_dir / "checkpoints"
    # Two checkpoints: last.ckpt after every epoch (resume) and the best validation epoch.
    callbacks = [StepSeed(cfg.seed),
                 ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1, monitor=None,
                                 enable_version_counter=False),
                 ModelCheckpoint(dirpath=str(ckpt_dir), filename="best-{epoch}", save_top_k=1,
                                 monitor=f"val/{d.monitor}", mode="max", enable_version_counter=False),
                 *(callbacks or [])]
    analysis = cfg.get("analysis") or {}
    if analysis.get("spectra"):
        from .analysis.spectra import SpectraCallback

        callbacks.append(SpectraCallback(run_dir / "spectra", every_n_epochs=int(analysis.get("every_n_epochs", 1))))
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(default_root_dir=str(run_dir), logger=build_loggers(cfg, run_dir), callbacks=callbacks, **t)
    resume = _resume_path("last" if auto else cfg.get("resume"), ckpt_dir)
    trainer.fit(module, datamodule=bundle.datamodule, ckpt_path=resume)

    results = summarise(cfg, module, d.monitor, b.get("selection", "best"), run_dir, t0,
                        params={"trainable": trainable, "total": total, "adapter": adapter_params},
                        split_sizes=bundle.split_sizes,
                        resumed_from=resume, config_hash=key)
    _write_json(run_dir / "results.json", results)
    mon = results["metrics"]
    print(f"\n[kasa] {cfg.method.name} on {d.name}: {d.monitor} final={mon['final'].get(d.monitor, float('nan')):.4f} "
          f"best={mon['best'].get(d.monitor, float('nan')):.4f} (epoch {mon['best_epoch']}) "
          f"in {results['wall_time_s']:.0f}s; trainable {adapter_params:,} adapter / {trainable:,} with head "
          f"of {total:,}")
    print(f"[kasa] results: {run_dir / 'results.json'}\n[kasa] logs: {run_dir / 'logs'}")
    return results


# Keys that do not change what a run computes: left out of the config hash.
HASH_EXCLUDE = ("resume", "sweep_dir", "trainer.enable_progress_bar")


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits of SHA-256 over the resolved config (without ``hydra`` and :data:`HASH_EXCLUDE`)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    for dotted in HASH_EXCLUDE:
        *parents, leaf = dotted.split(".")
        node = c
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:12]


def finished_results(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The results.json in ``run_dir`` if it was written for the config whose hash is ``key``."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return res if res.get("config_hash") == key else None


def _resume_path(resume: str | None, ckpt_dir: Path) -> str | None:
    if not resume:
        return None
    if resume == "last":
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise ConfigError(f"resume checkpoint '{resume}' does not exist (expected a run dir or a .ckpt file)")
    return str(path)


def summarise(cfg: DictConfig, module, monitor: str, selection: str, run_dir: Path, t0: float,
              **extra: Any) -> dict[str, Any]:
    import lightning
    import torch
    import transformers

    from . import __version__

    history = module.history
    if not history:
        raise RuntimeError("no validation epoch completed; nothing to report")
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "step")}
    best_row = max(history, key=lambda r: r.get(monitor, float("-inf")))
    best = {k: v for k, v in best_row.items() if k not in ("epoch", "step")}
    return {
        "method": cfg.method.name, "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
        "metrics": {"final": final, "best": best, "best_epoch": best_row["epoch"], "monitor": monitor,
                    "selection": selection, "reported": (best if selection == "best" else final)},
        "history": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "wall_time_s": time.time() - t0,
        "run_dir": str(run_dir),
        "versions": {"kasa": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
                     "transformers": transformers.__version__, "python": sys.version.split()[0]},
        **extra,
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    tmp.replace(path)  # atomic: a crash never leaves a half-written results.json


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def _known_errors() -> tuple[type[Exception], ...]:
    from .assets import MissingAssetError
    from .data.classification import DatasetError
    from .methods import MethodError
    from .models import ModelLoadError

    return (ConfigError, MethodError, ModelLoadError, MissingAssetError, DatasetError)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        results = run(cfg)
    except _known_errors() as exc:
        # One clear line naming the problem; SystemExit passes through Hydra's own error reporting.
        print(f"kasa-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(results["metrics"]["reported"].get(cfg.dataset.monitor, float("nan")))


def main() -> None:
    """Console script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
