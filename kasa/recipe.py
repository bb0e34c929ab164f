"""One run, start to end: the recipe kasa-train follows, and the model preparation kasa-eval and kasa-export share.

:func:`run` validates the config (:func:`kasa.config.validate.validate`: no weights, no data), claims the run folder
(:mod:`kasa.runs.folder`: fresh, resumed or skipped as finished), asks the benchmark family for its bundle
(:meth:`kasa.tasks.base.Task.build`: data, backbone with its head, datamodule, LightningModule), prepares the model
(:func:`prepare_model`), trains on one Lightning loop and writes ``results.json`` (:func:`summarise`).

:func:`prepare_model` is the one place that knows the order a method goes onto a backbone: quantise the base where
the method wants it quantised before, apply (with calibration batches for the methods that declare
``needs_calibration``), load an ``init_from`` adapter or a checkpoint's adapter, quantise after.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from kasa.config.validate import compile_backend_of, validate
from kasa.errors import ConfigError, JudgingFailed, LmEvalError, RunError
from kasa.runs.files import RESULTS_FILE, write_json
from kasa.runs.hashing import HASH_EXCLUDE, config_hash  # noqa: F401  (HASH_EXCLUDE: named in run's docstring)


def prepare_model(cfg: DictConfig, method: Any, model: Any, *, calibration: Callable[[], Iterable[Any]] | None = None,
                  state: dict[str, Any] | None = None, source: Path | str | None = None) -> Any:
    """Put ``method`` on ``model`` in place, as training does, and return the model.

    Order: quantise the base (``model.quantization``) where the method goes on a quantised base (QLoRA), apply the
    method (a method that declares ``needs_calibration`` gets ``calibration()``'s batches, or rebuilds from
    ``state`` when there is one: CorDA's saved factors), then either the run's trained adapter (``state``: a
    checkpoint's tensors, ``source`` names it in errors) or ``method.config.init_from`` (a PEFT adapter folder),
    then quantise where an SVD initialisation had to see the dense weights first.
    """
    from kasa.methods import MethodError
    from kasa.models.quantize import quantize_for_method

    quant, backend = cfg.model.get("quantization"), cfg.model.get("quantization_backend", "auto")
    quantize_for_method(model, method, quant, backend, stage="before")
    try:
        if method.needs_calibration and state is not None:
            method.apply(model, adapter_state_dict=state)  # CorDA: the saved initial factors replace calibration
        elif method.needs_calibration:
            if calibration is None:
                raise ConfigError(f"method {cfg.method.name} calibrates on training batches; none were given")
            method.apply(model, calibration=calibration())
        else:
            method.apply(model)
        if state is not None and not method.needs_calibration:
            if getattr(method.config, "keep_removed", False):  # removed triplets the run did not keep: apply's own
                own = model.state_dict()
                for k in method.extra_state_keys(model):
                    state.setdefault(k, own[k])
            method.load_adapter_state_dict(model, state)
    except (MethodError, RuntimeError) as exc:
        if state is None:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"{source} does not fit the model the run config builds: {first[:300]}") from None
    if state is None and method.config.init_from:  # an adapter trained elsewhere, in PEFT's folder format
        from kasa.methods.export import load_peft_adapter

        load_peft_adapter(method, model, method.config.init_from)
    quantize_for_method(model, method, quant, backend, stage="after")
    return model


def run(cfg: DictConfig, run_dir: str | Path | None = None, callbacks: list | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Train one configuration and return what was written to ``results.json``.

    ``callbacks``: extra Lightning callbacks (profilers, custom logging, ...).
    ``overrides``: for ``resume=<run dir>``, the resume command's overrides, each checked against the run's
    saved config (default: Hydra's task overrides under ``kasa-train``; from Python without them, ``cfg`` must
    be the run's config up to :data:`HASH_EXCLUDE`). The folder rules are in :mod:`kasa.runs.folder`.
    """
    from hydra.core.hydra_config import HydraConfig

    from kasa.runs import folder as runs

    t0 = time.time()
    validate(cfg)  # bad input fails here, in a second, before anything loads
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
    """One training segment in a claimed run folder (:func:`kasa.runs.folder.prepare` chose the checkpoint)."""
    import lightning as L
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint

    from kasa.methods import count_parameters, method_from_config
    from kasa.runs.checkpoints import AtomicCheckpointIO, step_checkpoint
    from kasa.tasks import get_task
    from kasa.training import StepSeed
    from kasa.training.callbacks import ResumeBatches
    from kasa.training.early_stopping import EarlyStoppingConfig, stopping_record
    from kasa.training.loggers import build_loggers, finish_wandb, wandb_summary
    from kasa.training.strategy import build_strategy, check_launch

    method = method_from_config(cfg.method)  # hyper-parameter errors before loading
    lm_eval_cb = _lm_eval_callback(cfg)  # benchmark.lm_eval.tasks: needs the extra, checked before loading
    L.seed_everything(cfg.seed, verbose=False)

    d, b = cfg.dataset, cfg.benchmark
    bundle = get_task(b.family).build(cfg, method)
    model, module = bundle.model, bundle.module
    prepare_model(cfg, method, model, calibration=bundle.calibration_batches)
    trainable, total = count_parameters(model)
    adapter_params = method.trainable_parameter_count(model)

    ckpt_dir = run_dir / "checkpoints"
    # Two checkpoints: last.ckpt after every validation (resume) and the best validation.
    callbacks = [StepSeed(cfg.seed), ResumeBatches(),  # a mid-epoch resume: same batches, same dropout
                 ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1, monitor=None,
                                 enable_version_counter=False),
                 ModelCheckpoint(dirpath=str(ckpt_dir), filename="best-{epoch}", save_top_k=1,
                                 monitor=f"val/{d.monitor}", mode="max", enable_version_counter=False),
                 start.record,  # config hash, wall time and resume points into every checkpoint
                 *(callbacks or [])]
    every = (cfg.get("checkpoint") or {}).get("every_n_train_steps")
    if every:  # checkpoint.every_n_train_steps: last.ckpt also every N optimiser steps (resumes mid-epoch)
        callbacks.insert(2, step_checkpoint(ckpt_dir, every))
    analysis = cfg.get("analysis") or {}
    if analysis.get("spectra"):
        from kasa.analysis.spectra import SpectraCallback

        callbacks.append(SpectraCallback(run_dir / "spectra", every_n_epochs=int(analysis.get("every_n_epochs", 1))))
    if lm_eval_cb is not None:
        callbacks.append(lm_eval_cb)
    stopping = EarlyStoppingConfig(**(OmegaConf.to_container(b.early_stopping, resolve=True)
                                      if b.get("early_stopping") is not None else {}))
    stop_cb = stopping.callback(d.monitor) if stopping.enabled else None
    if stop_cb is not None:  # benchmark.early_stopping.patience: stop when val/<monitor> stops rising
        callbacks.append(stop_cb)
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    compile_backend = compile_backend_of(t.pop("compile", False))  # kasa's, not a Lightning Trainer argument
    if compile_backend is not None:  # after prepare_model: the method's layers are part of the compiled graph
        module.compile_model(backend=compile_backend)
    try:
        if "strategy" in t:
            t["strategy"] = build_strategy(t["strategy"], model, t.get("accelerator", "auto"))
        plugins = [*(t.pop("plugins", None) or []), AtomicCheckpointIO()]  # last.ckpt and best-*.ckpt
        trainer = L.Trainer(default_root_dir=str(run_dir), logger=build_loggers(cfg, run_dir), callbacks=callbacks,
                            plugins=plugins, **t)
    except (MisconfigurationException, InstantiationException, ValueError) as exc:
        # Lightning's refusals (FSDP on CPU, no GPU, bad strategy arguments): one line, no traceback
        raise ConfigError(f"trainer: {' '.join(str(exc).split())}") from None
    check_launch(trainer)
    start.begin(cfg)  # config.yaml: from here on the folder is this config's run
    try:
        if t.get("max_epochs") == 0 and t.get("max_steps") in (None, -1):
            # a zero-shot row: one scored validation of the model as built (method=fft: the untouched base)
            trainer.validate(module, datamodule=bundle.datamodule)
        else:
            trainer.fit(module, datamodule=bundle.datamodule, ckpt_path=start.checkpoint, weights_only=True)
        failure = module.evaluation_failure()
        if failure:  # after the last checkpoint: the adapter and the generations are on disk
            raise JudgingFailed(f"the LLM judge failed at {failure}; the trained adapter "
                                f"({run_dir / 'checkpoints'}) and the generations ({run_dir / 'generations'}) are "
                                f"kept: judge them later with `kasa-eval {run_dir}` once the endpoint answers")
        params = {"trainable": trainable, "total": total, "adapter": adapter_params}
        stopped = {"early_stopping": stopping_record(stop_cb, stopping)} if stop_cb is not None else {}
        final = method.final_parameter_count(model)  # AdaLoRA: the final budget, the count papers report
        if final is not None:
            params["adapter_final"] = final
        results = summarise(cfg, module, d.monitor, b.get("selection", "best"), run_dir, start.record.t0,
                            wall_before=start.record.wall_before, params=params,
                            split_sizes=bundle.split_sizes,
                            resumed_from=start.checkpoint, resumes=start.record.resumes, config_hash=key,
                            # family extras: generation settings, metric backend, judge identity
                            **module.results_extra, **stopped)
        wandb_summary(trainer, results)
    finally:
        finish_wandb(trainer)  # else the next run of a multirun would log into this W&B run
    if not trainer.is_global_zero:  # data-parallel: every rank gets here with the same synced metrics
        return results
    write_json(run_dir / RESULTS_FILE, results)
    mon = results["metrics"]
    print(f"\n[kasa] {cfg.method.name} on {d.name}: {d.monitor} final={mon['final'].get(d.monitor, float('nan')):.4f} "
          f"best={mon['best'].get(d.monitor, float('nan')):.4f} (epoch {mon['best_epoch']}, step {mon['best_step']}) "
          f"in {results['wall_time_s']:.0f}s; trainable {adapter_params:,} adapter / {trainable:,} with head "
          f"of {total:,}")
    print(f"[kasa] results: {run_dir / RESULTS_FILE}\n[kasa] logs: {run_dir / 'logs'}")
    return results


def _lm_eval_callback(cfg: DictConfig):
    from kasa.tasks.lm_eval import lm_eval_callback

    try:
        return lm_eval_callback(cfg)
    except LmEvalError as exc:  # the extra is missing, or a classifier: a config problem
        raise ConfigError(str(exc)) from None


def summarise(cfg: DictConfig, module, monitor: str, selection: str, run_dir: Path, t0: float,
              wall_before: float = 0.0, **extra: Any) -> dict[str, Any]:
    """results.json's content; ``wall_time_s`` adds ``wall_before``, the segments before a resume."""
    import lightning
    import torch
    import transformers

    from kasa import __version__

    history = module.history
    if not history:
        raise RuntimeError("no validation epoch completed; nothing to report")
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "step")}
    best_row = max(history, key=lambda r: r.get(monitor, float("-inf")))
    best = {k: v for k, v in best_row.items() if k not in ("epoch", "step")}
    return {
        "method": cfg.method.name, "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
        "metrics": {"final": final, "best": best, "best_epoch": best_row["epoch"],
                    "best_step": best_row.get("step"), "monitor": monitor,
                    "selection": selection, "reported": (best if selection == "best" else final)},
        "history": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "wall_time_s": wall_before + time.time() - t0,
        "run_dir": str(run_dir),
        "versions": {"kasa": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
                     "transformers": transformers.__version__, "python": sys.version.split()[0]},
        **extra,
    }
