"""Hydra entry point: ``kasa-train [overrides]`` (also ``python -m kasa.train``).

Composes model / method / dataset / benchmark / trainer / logger, trains on one Lightning loop and
writes ``results.json`` (final and best metrics, resolved config, parameter counts, wall time,
versions) into the run directory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .checks import ConfigError, check_config  # noqa: E402,F401  (kasa.train.ConfigError stays public)
from .hashing import HASH_EXCLUDE, config_hash  # noqa: E402,F401  (kasa.train.config_hash stays public)

CONF_DIR = Path(os.environ.get("KASA_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))


def _register_configs() -> None:
    from .configs import register_configs

    register_configs(CONF_DIR)


_register_configs()  # the method group's typed nodes, before Hydra composes (ours or a test's compose)


def _register_resolvers() -> None:
    from .analysis.hparams_search import register_resolvers

    register_resolvers()


_register_resolvers()  # conf/hparams_search/: the Optuna study's storage, trials left and seed


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
    from lightning.pytorch.loggers import WandbLogger

    from .training.runs import AppendingCSVLogger

    loggers: list = []
    if cfg.logger.get("csv", True):  # appends to metrics.csv on resume (Lightning's CSVLogger deletes it)
        loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="logs", version=""))
    wb = cfg.logger.get("wandb")
    if wb:
        logger = _wandb_logger(cfg, wb, run_dir, WandbLogger)
        if logger is not None:
            loggers.append(logger)
    return loggers


# How long W&B may take to answer before a run logs offline: a probe of its host, then wandb.init's own limit.
WANDB_PROBE_TIMEOUT_S = 3.0
WANDB_INIT_TIMEOUT_S = 30.0


def _wandb_logger(cfg: DictConfig, wb: Any, run_dir: Path, cls: type) -> Any:
    """A W&B logger that never costs the run: online only when W&B's host answers within seconds and
    ``wandb.init`` succeeds; else offline (``wandb sync`` uploads it later); else none, with one line saying so.

    The W&B run is started here, not lazily when training starts, so that a failing start (no network, a bad
    key) is caught here and falls back, instead of ending ``trainer.fit``.
    """
    import wandb

    from .checks import probe_url

    mode = _wandb_mode(wb.get("mode", "auto"))
    if mode == "online":
        url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
        why = probe_url(url, timeout=WANDB_PROBE_TIMEOUT_S)
        if why:
            print(f"[kasa] W&B: {url} does not answer ({why}); logging offline to {run_dir / 'wandb'} "
                  "(`wandb sync` uploads it later)", file=sys.stderr)
            mode = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    if wandb.run is not None:  # one W&B run per kasa run: an earlier run of this process left one open
        wandb.finish()
    for attempt in dict.fromkeys([mode, "offline"]):
        os.environ["WANDB_MODE"] = attempt
        try:
            logger = cls(project=wb.get("project", "kasa"), entity=wb.get("entity"), group=wb.get("group"),
                         tags=list(wb.get("tags") or []), name=cfg.get("run_name"), save_dir=str(run_dir),
                         offline=attempt == "offline", config=OmegaConf.to_container(cfg, resolve=True),
                         settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S))
            logger.experiment  # noqa: B018 -- start the W&B run now (see above)
            return logger
        except Exception as exc:  # noqa: BLE001 -- a logger must never cost a run
            nxt = "logging offline" if attempt != "offline" else "W&B logger disabled"
            print(f"[kasa] W&B {attempt} start failed ({' '.join(str(exc).split())[:300]}); {nxt}", file=sys.stderr)
    return None


def validate(cfg: DictConfig) -> None:
    """Checks that need no model weights or data, so bad input fails in a second, before any loading:
    packages a trainer strategy needs, the value table and the rest of :mod:`kasa.checks`, the registries' names."""
    check_strategy(cfg.get("trainer"))
    check_config(cfg)
    from .data.classification import SOURCES
    from .benchmarks import BENCHMARKS
    from .methods import REGISTRY

    if cfg.method.name not in REGISTRY:
        raise ConfigError(f"unknown method '{cfg.method.name}'; known: {' '.join(sorted(REGISTRY))}")
    fam = cfg.benchmark.get("family")
    if fam not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark family '{fam}'; known: {sorted(BENCHMARKS)}")
    if fam == "classification" and cfg.dataset.source not in SOURCES:
        raise ConfigError(f"unknown dataset source '{cfg.dataset.source}'; known: {sorted(SOURCES)}")
    precision = str((cfg.get("trainer") or {}).get("precision", ""))
    if precision in ("bf16-true", "16-true") and cfg.method.get("autocast_adapter_dtype", True) \
            and REGISTRY[cfg.method.name].wraps_targets:
        # Lightning's *-true precisions cast the whole module after apply: the float32 adapters with it
        raise ConfigError(f"trainer.precision={precision} casts the float32 adapter parameters to half precision; "
                          "load the model in half precision (model.dtype=bfloat16) with trainer.precision=32-true, "
                          "use bf16-mixed, or set method.autocast_adapter_dtype=false")
    check_optim(cfg.benchmark.get("optim"), fam)


def check_optim(optim_cfg: Any, family: str | None = None) -> None:
    """``benchmark.optim`` builds an :class:`~kasa.training.optim.OptimConfig` (known keys, allowed values)."""
    from .training.optim import OptimConfig

    values = OmegaConf.to_container(optim_cfg, resolve=True) if isinstance(optim_cfg, DictConfig) else optim_cfg
    try:
        o = OptimConfig(**(values or {}))
    except TypeError as exc:  # an unknown key
        raise ConfigError(f"benchmark.optim: {exc}".replace("OptimConfig.__init__() ", "")) from None
    except ValueError as exc:
        raise ConfigError(f"benchmark.{exc}") from None
    if o.label_smoothing and family == "classification":
        raise ConfigError(f"benchmark.optim.label_smoothing={o.label_smoothing}: only the causal-LM benchmarks "
                          "(e2e, commonsense, instruction) use it; set 0.0")


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


def run(cfg: DictConfig, run_dir: str | Path | None = None, callbacks: list | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Train one configuration and return what was written to ``results.json``.

    ``callbacks``: extra Lightning callbacks (profilers, custom logging, ...).
    ``overrides``: for ``resume=<run dir>``, the resume command's overrides, each checked against the run's
    saved config (default: Hydra's task overrides under ``kasa-train``; from Python without them, ``cfg`` must
    be the run's config up to :data:`HASH_EXCLUDE`). The folder rules are in :mod:`kasa.training.runs`.
    """
    from hydra.core.hydra_config import HydraConfig

    from .training import runs

    t0 = time.time()
    validate(cfg)
    resume = cfg.get("resume")
    folder, explicit = runs.resume_folder(resume), None
    if resume and resume not in ("last", "auto"):
        explicit = Path(str(resume)) if Path(str(resume)).is_file() else None
        if folder is None and explicit is None:
            raise ConfigError(f"resume checkpoint '{resume}' does not exist (expected a run dir or a .ckpt file)")
    if folder is not None:  # continue that run in its own folder, from its own config
        if run_dir is not None and Path(run_dir).resolve() != folder.resolve():
            raise ConfigError(f"resume={resume} continues the run in {folder}; run_dir={run_dir} is another folder")
        if overrides is None and HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
        cfg = runs.resume_config(cfg, folder, overrides)
        run_dir = folder
    key = config_hash(cfg)
    if run_dir is None and cfg.get("sweep_dir"):
        run_dir = Path(cfg.sweep_dir) / f"{cfg.run_name}-{key}"
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    auto = cfg.get("resume") == "auto" or (cfg.get("sweep_dir") and cfg.get("resume") is None)
    mode = "auto" if auto else ("resume" if cfg.get("resume") else "fresh")
    start = runs.prepare(run_dir, cfg, key, mode, t0, explicit)
    if start.skipped is not None:
        return start.skipped
    try:
        return _fit(cfg, run_dir, key, start, callbacks)
    finally:
        start.release()


def _fit(cfg: DictConfig, run_dir: Path, key: str, start: Any, callbacks: list | None) -> dict[str, Any]:
    """One training segment in a claimed run folder (:func:`kasa.training.runs.prepare` chose the checkpoint)."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from hydra.errors import InstantiationException
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .benchmarks import BENCHMARKS
    from .methods import count_parameters, method_from_config
    from .models.quantize import quantize_for_method
    from .training import StepSeed
    from .training.runs import AtomicCheckpointIO

    method = method_from_config(cfg.method)  # hyper-parameter errors before loading
    lm_eval_cb = _lm_eval_callback(cfg)  # benchmark.lm_eval.tasks: needs the extra, checked before loading
    L.seed_everything(cfg.seed, verbose=False)

    d, b = cfg.dataset, cfg.benchmark
    bundle = BENCHMARKS[b.family](cfg, method)
    model, module = bundle.model, bundle.module
    quant = cfg.model.get("quantization")
    # QLoRA order: the base is quantised before a plain adapter goes on it, after an SVD init wrote its residual
    quantize_for_method(model, method, quant, cfg.model.get("quantization_backend", "auto"), stage="before")
    if getattr(method, "needs_calibration", False):
        method.apply(model, calibration=bundle.calibration_batches())  # CorDA: input covariances
    else:
        method.apply(model)
    if method.config.init_from:  # an adapter trained elsewhere, in PEFT's folder format
        from .methods.export import load_peft_adapter

        load_peft_adapter(method, model, method.config.init_from)
    quantize_for_method(model, method, quant, cfg.model.get("quantization_backend", "auto"), stage="after")
    trainable, total = count_parameters(model)
    adapter_params = method.trainable_parameter_count(model)

    ckpt_dir = run_dir / "checkpoints"
    # Two checkpoints: last.ckpt after every epoch (resume) and the best validation epoch.
    callbacks = [StepSeed(cfg.seed),
                 ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1, monitor=None,
                                 enable_version_counter=False),
                 ModelCheckpoint(dirpath=str(ckpt_dir), filename="best-{epoch}", save_top_k=1,
                                 monitor=f"val/{d.monitor}", mode="max", enable_version_counter=False),
                 start.record,  # config hash, wall time and resume points into every checkpoint
                 *(callbacks or [])]
    analysis = cfg.get("analysis") or {}
    if analysis.get("spectra"):
        from .analysis.spectra import SpectraCallback

        callbacks.append(SpectraCallback(run_dir / "spectra", every_n_epochs=int(analysis.get("every_n_epochs", 1))))
    if lm_eval_cb is not None:
        callbacks.append(lm_eval_cb)
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    try:
        if "strategy" in t:
            t["strategy"] = build_strategy(t["strategy"], model)
        plugins = [*(t.pop("plugins", None) or []), AtomicCheckpointIO()]  # last.ckpt and best-*.ckpt
        trainer = L.Trainer(default_root_dir=str(run_dir), logger=build_loggers(cfg, run_dir), callbacks=callbacks,
                            plugins=plugins, **t)
    except (MisconfigurationException, InstantiationException, ValueError) as exc:
        # Lightning's refusals (FSDP on CPU, no GPU, bad strategy arguments): one line, no traceback
        raise ConfigError(f"trainer: {' '.join(str(exc).split())}") from None
    check_launch(trainer)
    start.begin(cfg)  # config.yaml: from here on the folder is this config's run
    try:
        trainer.fit(module, datamodule=bundle.datamodule, ckpt_path=start.checkpoint, weights_only=True)
        judge_error = getattr(getattr(module, "evaluator", None), "error", None)
        if judge_error:  # after the last checkpoint: the adapter and the generations are on disk
            from .eval.judge import JudgingFailed

            raise JudgingFailed(f"the LLM judge failed at {judge_error}; the trained adapter "
                                f"({run_dir / 'checkpoints'}) and the generations ({run_dir / 'generations'}) are "
                                f"kept: judge them later with `kasa-eval {run_dir}` once the endpoint answers")
        params = {"trainable": trainable, "total": total, "adapter": adapter_params}
        final = method.final_parameter_count(model)  # AdaLoRA: the final budget, the count papers report
        if final is not None:
            params["adapter_final"] = final
        results = summarise(cfg, module, d.monitor, b.get("selection", "best"), run_dir, start.record.t0,
                            wall_before=start.record.wall_before, params=params,
                            split_sizes=bundle.split_sizes,
                            resumed_from=start.checkpoint, resumes=start.record.resumes, config_hash=key,
                            # family extras: generation settings, metric backend, judge identity
                            **getattr(module, "results_extra", {}))
        _wandb_summary(trainer, results)
    finally:
        _finish_wandb(trainer)  # else the next run of a multirun would log into this W&B run
    if not trainer.is_global_zero:  # data-parallel: every rank gets here with the same synced metrics
        return results
    _write_json(run_dir / "results.json", results)
    mon = results["metrics"]
    print(f"\n[kasa] {cfg.method.name} on {d.name}: {d.monitor} final={mon['final'].get(d.monitor, float('nan')):.4f} "
          f"best={mon['best'].get(d.monitor, float('nan')):.4f} (epoch {mon['best_epoch']}) "
          f"in {results['wall_time_s']:.0f}s; trainable {adapter_params:,} adapter / {trainable:,} with head "
          f"of {total:,}")
    print(f"[kasa] results: {run_dir / 'results.json'}\n[kasa] logs: {run_dir / 'logs'}")
    return results


def _lm_eval_callback(cfg: DictConfig):
    from .harness import LmEvalError, lm_eval_callback

    try:
        return lm_eval_callback(cfg)
    except LmEvalError as exc:
        raise ConfigError(str(exc)) from None


def _wandb_loggers(trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _wandb_summary(trainer, results: dict[str, Any]) -> None:
    """The reported, final and best metrics as W&B run summary (what sweeps and kasa-report read)."""
    for lg in _wandb_loggers(trainer):
        m = results["metrics"]
        lg.experiment.summary.update({**{f"{part}/{k}": v for part in ("final", "best", "reported")
                                         for k, v in m[part].items()},
                                      "best_epoch": m["best_epoch"], "params/adapter": results["params"]["adapter"]})


def _finish_wandb(trainer) -> None:
    for lg in _wandb_loggers(trainer):
        if lg._experiment is not None:
            lg.experiment.finish()


def _resume_dir(default: str, *, _root_: DictConfig) -> str:
    """``hydra.run.dir`` for ``resume=<run dir>``: that run's ``resumes/`` (Hydra's files of the resume command);
    ``default`` otherwise."""
    from .training.runs import resume_folder

    try:
        folder = resume_folder(_root_.get("resume"))
    except Exception:  # noqa: BLE001 -- run() names a bad resume value in one line
        folder = None
    return str(folder / "resumes") if folder is not None else default


# conf/train.yaml names run folders by the config hash, resolved when Hydra composes the config
OmegaConf.register_new_resolver("kasa_hash", lambda *, _root_: config_hash(_root_), replace=True)
OmegaConf.register_new_resolver("kasa_resume_dir", _resume_dir, replace=True)


def summarise(cfg: DictConfig, module, monitor: str, selection: str, run_dir: Path, t0: float,
              wall_before: float = 0.0, **extra: Any) -> dict[str, Any]:
    """results.json's content; ``wall_time_s`` adds ``wall_before``, the segments before a resume."""
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
        "wall_time_s": wall_before + time.time() - t0,
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
    from .eval.judge import JudgingFailed
    from .models import ModelLoadError

    return (ConfigError, MethodError, ModelLoadError, MissingAssetError, DatasetError, JudgingFailed)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .console import quiet_console
    from .hydra_callbacks import clear_failure, record_failure, remove_if_empty

    quiet_console()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        results = run(cfg)
    except Exception as exc:
        known = isinstance(exc, _known_errors())
        if not (known or multirun):
            raise  # a bug: Hydra prints the traceback
        # One clear line naming the problem (a traceback only for what kasa does not know).
        if known:
            print(f"kasa-train: error: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        if not multirun:
            remove_if_empty(hc.runtime.output_dir)  # a failed run leaves no empty folder
            remove_if_empty(_sweep_point_dir(cfg), stop=cfg.get("sweep_dir"))
            sys.exit(2)  # SystemExit passes through Hydra's own error reporting
        # A multirun goes on with the other points: the record makes the summary and the retry.
        record_failure([Path(hc.runtime.output_dir), *filter(None, [_sweep_point_dir(cfg)])], exc,
                       list(hc.overrides.task), _safe_hash(cfg), with_traceback=not known)
        return _objective(float("nan"))
    clear_failure(results.get("run_dir"))
    return _objective(float(results["metrics"]["reported"].get(cfg.dataset.monitor, float("nan"))),
                      cfg.dataset.monitor)


def _objective(value: float, monitor: str = "the run") -> float:
    """What the Hydra main returns; under the Optuna sweeper a NaN (a failed or diverged run) becomes an exception,
    which hydra-optuna-sweeper records as a failed trial (a NaN return would abort the whole search)."""
    if math.isnan(value) and _optuna_sweep():
        from .analysis.hparams_search import FailedTrial

        raise FailedTrial(f"{monitor} is NaN" if monitor != "the run" else "the run failed")
    return value


def _optuna_sweep() -> bool:
    """Whether this job runs under the Optuna sweeper (conf/hparams_search/)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def _safe_hash(cfg: DictConfig) -> str | None:
    try:
        return config_hash(cfg)
    except Exception:  # an interpolation that does not resolve: the record still names the overrides
        return None


def _sweep_point_dir(cfg: DictConfig) -> Path | None:
    """The folder ``run`` gives this config under ``sweep_dir`` (``None`` without one)."""
    key = _safe_hash(cfg)
    if not cfg.get("sweep_dir") or key is None:
        return None
    return Path(cfg.sweep_dir) / f"{cfg.run_name}-{key}"


def compose_error(argv: list[str]) -> str | None:
    """One line for overrides that do not compose (``method.alpha=abc`` against the method's typed config,
    ``model=nope``), ``None`` when they do. Hydra itself would print a multi-line report and exit 1.

    Only plain runs are checked here: ``-m`` sweeps, ``--cfg``/``--help`` and other config names go straight to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from omegaconf.errors import OmegaConfBaseException

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return None  # Hydra's own parser names the problem
    if (args.multirun or args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.config_path or args.config_name or args.config_dir or args.experimental_rerun):
        return None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose("train", overrides=list(args.overrides))
    except Exception as exc:  # noqa: BLE001 -- every composition error becomes one line
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, OmegaConfBaseException) and getattr(root, "full_key", None):
            return f"{root.full_key}: {str(root).splitlines()[0]}"
        return " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    return None


def main() -> None:
    """Console script entry point."""
    problem = compose_error(sys.argv[1:])
    if problem:
        print(f"kasa-train: error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
