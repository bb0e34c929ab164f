"""Hydra entry point: ``kasa-train [overrides]`` (also ``python -m kasa.train``).

Composes model / method / dataset / benchmark / trainer / logger and hands the config to :func:`kasa.recipe.run`,
which trains on one Lightning loop and writes ``results.json`` into the run directory. Known errors
(:class:`kasa.errors.KasaError`) are one line and exit 2; a multirun records a failing point and goes on.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from kasa.cli.console import report_error
from kasa.config import CONF_DIR, register  # noqa: E402
from kasa.errors import KasaError  # noqa: E402
from kasa.runs.hashing import config_hash  # noqa: E402

register()  # the typed method nodes and resolvers, before @hydra.main composes


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kasa.cli.console import quiet_console
    from kasa.recipe import run
    from kasa.runs.failures import clear_failure, record_failure, remove_if_empty

    quiet_console()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        results = run(cfg)
    except Exception as exc:
        known = isinstance(exc, KasaError)
        if not (known or multirun):
            raise  # a bug: Hydra prints the traceback
        # One clear line naming the problem (a traceback only for what kasa does not know).
        if known:
            report_error("kasa-train", exc)
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
        from kasa.config.hparams_search import FailedTrial

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
