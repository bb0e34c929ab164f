"""Optuna searches through ``hydra-optuna-sweeper`` (``conf/hparams_search/``): what makes them resumable.

``kasa-train -m hparams_search=kasa_beta_gamma`` runs an Optuna study whose objective is the value kasa-train's
Hydra main returns (the run's reported monitor metric). The sweeper itself (1.3, with optuna 2.10) always asks
for ``n_trials`` NEW trials and re-seeds its sampler on every start, so a rerun after an interruption would run
``n_trials`` more (6 where 3 were asked for) and re-propose the first run's random start-up points. Three OmegaConf
resolvers, read when the sweeper is built, fix that from the study's own SQLite file:

- ``kasa_optuna_storage``: ``sqlite:///<sweep_dir>/optuna.db`` (the folder is created: SQLite will not);
- ``kasa_optuna_left``: ``n_trials`` minus the trials the study already finished (complete, failed or pruned);
  a trial cut off mid-run stays ``RUNNING`` in the study and is not counted;
- ``kasa_optuna_seed``: the sampler seed plus the number of trials already in the study, so a resumed search
  is reproducible and draws new points.

A NaN metric would abort the sweeper (it cannot record one), so kasa-train raises :class:`FailedTrial` instead
and the sweeper records a failed trial; ``max_failure_rate: 1.0`` lets the search go on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

FINISHED = ("COMPLETE", "FAIL", "PRUNED")


class FailedTrial(RuntimeError):
    """A run whose objective is NaN: reported to the Optuna sweeper as a failed trial."""


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError("hparams_search needs Optuna: pip install -e '.[optuna]'") from None
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def storage_url(folder: str | Path) -> str:
    """``sqlite:///<folder>/optuna.db`` (absolute), creating ``folder``."""
    path = Path(folder).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'optuna.db'}"


def _trials(storage: str, study_name: str) -> list:
    optuna = _optuna()
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).exists():
        return []
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # no study of that name in the file yet
        return []


def finished_trials(storage: str, study_name: str) -> int:
    """How many trials of the study finished (complete, failed or pruned); 0 for a study not created yet."""
    return sum(t.state.name in FINISHED for t in _trials(storage, study_name))


def trials_left(storage: str, study_name: str, n_trials: int) -> int:
    """``n_trials`` minus the finished trials: what a (resumed) search still has to run."""
    left = max(0, int(n_trials) - finished_trials(storage, study_name))
    logging.getLogger(__name__).info("optuna study %s: %d trial(s) to run", study_name, left)
    return left


def sampler_seed(seed: int | None, storage: str, study_name: str) -> int | None:
    """``seed`` offset by the number of trials already in the study (None stays None: an unseeded search)."""
    return None if seed is None else int(seed) + len(_trials(storage, study_name))


def register_resolvers() -> None:
    """Register the ``kasa_optuna_*`` resolvers (idempotent; kasa.recipe does it at import)."""
    for name, fn in (("kasa_optuna_storage", storage_url), ("kasa_optuna_left", trials_left),
                     ("kasa_optuna_seed", sampler_seed)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
