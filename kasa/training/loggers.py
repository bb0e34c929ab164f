"""The run's loggers: a CSV log that survives resumes, a W&B logger that never costs the run, and TensorBoard."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf


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

    loggers: list = []
    if cfg.logger.get("csv", True):  # appends to metrics.csv on resume (Lightning's CSVLogger deletes it)
        loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="logs", version=""))
    wb = cfg.logger.get("wandb")
    if wb:
        logger = _wandb_logger(cfg, wb, run_dir, WandbLogger)
        if logger is not None:
            loggers.append(logger)
    if cfg.logger.get("tensorboard"):  # <run dir>/logs/tensorboard/events.out.tfevents.*; a resume adds a file
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard",
                                         default_hp_metric=False))
    return loggers


def tensorboard_available() -> bool:
    """Whether Lightning's ``TensorBoardLogger`` can write: it needs ``tensorboard`` or ``tensorboardX``."""
    from importlib.util import find_spec

    return find_spec("tensorboardX") is not None or find_spec("tensorboard") is not None


def check_loggers(logger_cfg: Any) -> None:
    """``logger.tensorboard`` without a package to write it: one line, before anything loads."""
    from kasa.errors import ConfigError

    if logger_cfg is not None and logger_cfg.get("tensorboard") and not tensorboard_available():
        raise ConfigError("logger=tensorboard needs tensorboardX (or tensorboard): pip install 'kasa[tensorboard]'")


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

    from kasa.config.checks import probe_url

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


def _wandb_loggers(trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def wandb_summary(trainer, results: dict[str, Any]) -> None:
    """The reported, final and best metrics as W&B run summary (what sweeps and kasa-report read)."""
    for lg in _wandb_loggers(trainer):
        m = results["metrics"]
        lg.experiment.summary.update({**{f"{part}/{k}": v for part in ("final", "best", "reported")
                                         for k, v in m[part].items()},
                                      "best_epoch": m["best_epoch"], "params/adapter": results["params"]["adapter"]})


def finish_wandb(trainer) -> None:
    for lg in _wandb_loggers(trainer):
        if lg._experiment is not None:
            lg.experiment.finish()


# -- the whole history across resumes -------------------------------------------------------------------
class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run appends to it instead (after
        # trim_metrics dropped the rows the resume redoes), starting from its header.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, but a resumed run appends to ``metrics.csv`` instead of deleting it, and the rows
    so far are flushed with every checkpoint (a killed run's file covers everything its checkpoint covers)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


