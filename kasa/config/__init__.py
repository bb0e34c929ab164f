"""Configuration: where ``conf/`` is, the structured-config schemas (:mod:`kasa.config.schemas`), validation written
once (:mod:`kasa.config.checks`), the OmegaConf resolvers and Hydra callbacks (:mod:`kasa.config.hydra`), Optuna
search resolvers (:mod:`kasa.config.hparams_search`) and method presets (:mod:`kasa.config.presets`).

Importing this package has no side effects; :func:`register` (idempotent) stores the typed nodes and resolvers that
Hydra needs before it composes a run's config, and every entry point that composes calls it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONF_DIR = Path(os.environ.get("KASA_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))


@functools.cache
def register() -> None:
    """The typed ``method`` nodes and ``benchmark`` sub-schemas in Hydra's ConfigStore, and kasa's resolvers
    (``kasa_hash``, ``kasa_resume_dir``, the Optuna search's): before Hydra composes (ours or a test's compose)."""
    from kasa.config.hparams_search import register_resolvers
    from kasa.config.hydra import register_run_resolvers
    from kasa.config.schemas import register_configs

    register_configs(CONF_DIR)
    register_run_resolvers()
    register_resolvers()


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> "DictConfig":
    """kasa-train's config for these Hydra overrides, composed as ``kasa-train`` would (typed nodes registered)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


__all__ = ["CONF_DIR", "compose", "register"]
