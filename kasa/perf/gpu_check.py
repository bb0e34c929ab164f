"""Dry-mode helper of ``scripts/gpu_check.sh``: whether its ``kasa-train`` commands compose, without training.

    python -m kasa.perf.gpu_check FILE

``FILE``: one line per command, tab-separated: the part's name, then its overrides. Each is composed as
``kasa-train`` would (:func:`kasa.cli.train.compose_error`, one line per
problem) and checked by :func:`kasa.config.validate` (every check that needs neither weights nor data). Prints one
line per part, tab-separated: name, ``ok`` | ``error``, and the reason. Exit status 1 when any part is an
``error``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

STATUSES = ("ok", "error")


def compose_status(overrides: Sequence[str]) -> tuple[str, str]:
    """``(status, reason)`` of ``kasa-train <overrides>`` (see the module docstring)."""
    from hydra import compose, initialize_config_dir

    from kasa.cli.train import compose_error
    from kasa.config import CONF_DIR, register
    from kasa.config.validate import validate
    from kasa.errors import KasaError

    register()
    problem = compose_error(list(overrides))
    if problem is None:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        try:
            validate(cfg)
        except KasaError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            return "ok", "composes and passes kasa.config.validate"
    return "error", problem


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_file():
        print("python -m kasa.perf.gpu_check: error: give one file of tab-separated commands "
              "(name, overrides...)", file=sys.stderr)
        return 2
    bad = False
    for line in Path(args[0]).read_text().splitlines():
        if not line.strip():
            continue
        name, *overrides = line.split("\t")
        status, reason = compose_status(overrides)
        bad |= status == "error"
        print(f"{name}\t{status}\t{reason}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
