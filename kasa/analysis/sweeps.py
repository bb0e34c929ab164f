"""W&B sweep files (``experiments/*.yaml``) as Hydra multirun command lines, so both launchers run one grid.

    python -m kasa.analysis.sweeps experiments/glue_roberta_base.yaml   # prints the kasa-train -m line
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def load_sweep(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    return str(v)


def grid(sweep: dict[str, Any]) -> dict[str, list[Any]]:
    """``{override key: [values]}`` of a W&B grid sweep (``value`` is a one-value list)."""
    out = {}
    for key, spec in (sweep.get("parameters") or {}).items():
        out[key] = list(spec["values"]) if "values" in spec else [spec["value"]]
    return out


def multirun_command(sweep: dict[str, Any], program: str = "kasa-train") -> str:
    """The Hydra multirun line running the same grid: ``kasa-train -m key=v1,v2 ...``."""
    parts = [program, "-m"]
    for key, values in grid(sweep).items():
        parts.append(f"{key}={','.join(_fmt(v) for v in values)}")
    return " ".join(parts)


def first_point(sweep: dict[str, Any]) -> list[str]:
    """Overrides of the grid's first point (for a quick check that the grid composes)."""
    return [f"{k}={_fmt(v[0])}" for k, v in grid(sweep).items()]


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(multirun_command(load_sweep(p)))
