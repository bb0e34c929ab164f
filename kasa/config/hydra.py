"""What Hydra calls into: the OmegaConf resolvers of conf/train.yaml and kasa-train's Hydra callback.

- ``${kasa_hash:}``: the config hash (:func:`kasa.runs.hashing.config_hash`) that names run folders, resolved when
  Hydra composes the config; ``${kasa_resume_dir:...}``: for ``resume=<run dir>``, that run's ``resumes/``.
- :class:`KasaCallback` (``hydra.callbacks``): before Hydra creates the output folder (``hydra.run.dir``, or
  ``hydra.sweep.dir`` under ``-m``), a folder that cannot be written fails in one line (Hydra's own ``mkdir`` would
  end in a traceback); at the end of a multirun it prints every failed point (:mod:`kasa.runs.failures`) and exits 2
  (1 if a point crashed with a traceback).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kasa.config.checks import folder_problem
from kasa.runs.failures import failures


def _resume_dir(default: str, *, _root_: DictConfig) -> str:
    """``hydra.run.dir`` for ``resume=<run dir>``: that run's ``resumes/`` (Hydra's files of the resume command);
    ``default`` otherwise."""
    from kasa.runs.folder import resume_folder

    try:
        folder = resume_folder(_root_.get("resume"))
    except Exception:  # noqa: BLE001 -- run() names a bad resume value in one line
        folder = None
    return str(folder / "resumes") if folder is not None else default


def _monitor(*, _root_: DictConfig) -> str:
    """``${kasa_monitor:}``: the benchmark family's default metric, for a dataset config that several families
    read (``dataset=files_generation``)."""
    from kasa.tasks import get_task

    return get_task(_root_.benchmark.get("family")).default_monitor


def register_run_resolvers() -> None:
    """``kasa_hash`` and ``kasa_resume_dir`` (conf/train.yaml's ``hydra.run.dir``), ``kasa_monitor``."""
    from kasa.runs.hashing import config_hash

    OmegaConf.register_new_resolver("kasa_hash", lambda *, _root_: config_hash(_root_), replace=True)
    OmegaConf.register_new_resolver("kasa_resume_dir", _resume_dir, replace=True)
    OmegaConf.register_new_resolver("kasa_monitor", _monitor, replace=True)


def _fail_on_folder(config: DictConfig, key: str) -> None:
    try:
        path = str(OmegaConf.select(config, key))
    except Exception:  # noqa: BLE001 -- a value that does not resolve is named by the run's own checks
        return
    why = folder_problem(path)
    if why:
        print(f"kasa-train: error: {key}='{path}' cannot be created or written: {why}", file=sys.stderr)
        sys.exit(2)


class KasaCallback(Callback):
    """Checks output folders before Hydra creates them; summarises a multirun's failed points at its end."""

    def __init__(self) -> None:
        self._t0 = time.time()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _fail_on_folder(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._t0 = time.time()
        _fail_on_folder(config, "hydra.sweep.dir")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failures(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))), since=self._t0)
        if not failed:
            return
        swept = _swept_keys(list(OmegaConf.select(config, "hydra.overrides.task") or []))
        print(f"\nkasa-train: {len(failed)} point(s) of this multirun failed:", file=sys.stderr)
        for path, rec in failed:
            point = rec.get("overrides") or []
            what = " ".join(o for o in point if o.split("=", 1)[0].lstrip("+~") in swept) or " ".join(point)
            print(f"  {what}: {rec.get('type')}: {rec.get('error')}  [{path}]", file=sys.stderr)
        print("kasa-train: rerun the command to retry them (with sweep_dir=..., finished points are skipped)",
              file=sys.stderr)
        # 2 as for a single run when every failure was one of kasa's named errors; 1 when a point crashed
        sys.exit(1 if any("traceback" in rec for _, rec in failed) else 2)


def _swept_keys(overrides: list[str]) -> set[str]:
    """The keys a multirun sweeps over (``method.r=0,4``): what tells its points apart."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 -- the summary then shows each point's full overrides
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}
