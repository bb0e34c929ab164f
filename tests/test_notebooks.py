"""Every notebook runs headless (nbclient) on tiny offline runs and writes its figures as PNG."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FIGURES = {"spectra_of_a_trained_run": ["spectra_training.png", "spectra_update.png", "spectra_tail.png"],
           "sv_heatmap": ["sv_heatmap.png"],
           "ablation_and_rank_sweep": ["ablation.png", "rank_sweep.png"]}
KERNEL = "kasa-test-python"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec for this very interpreter, found first through JUPYTER_PATH (works from a fresh clone,
    whatever `python3` kernels the machine has registered)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kasa test", "language": "python"}))
    old = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "KASA_FIGURES_DIR", "KASA_RUN_DIR", "KASA_RUNS_DIR",
                                          "KASA_HEATMAP_RUNS")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), old["JUPYTER_PATH"]]))
    for k in ("KASA_RUN_DIR", "KASA_RUNS_DIR", "KASA_HEATMAP_RUNS"):
        os.environ.pop(k, None)  # the notebooks' own tiny runs
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow  # three kernels each importing torch and training tiny runs (~20 s on 2 cores); the default suite
# checks the committed notebooks below (generated from make_notebooks.py, executed, no error output)
def test_notebooks_run_headless_and_save_pngs(kernel_env, tmp_path):
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(FIGURES)
    os.environ["KASA_FIGURES_DIR"] = str(tmp_path / "figures")  # distinct PNG names per notebook

    async def execute_all():
        # one kernel per notebook, run together: most of a notebook's time is its kernel importing torch
        clients = [nbclient.NotebookClient(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4),
                                           kernel_name=KERNEL, timeout=120,
                                           resources={"metadata": {"path": str(tmp_path)}}) for name in FIGURES]
        await asyncio.gather(*(c.async_execute() for c in clients))

    asyncio.run(execute_all())
    for name, pngs in FIGURES.items():
        for png in pngs:
            assert (tmp_path / "figures" / png).stat().st_size > 1000, f"{name}: {png} missing or empty"


def test_committed_notebooks_are_generated_and_executed():
    """The .ipynb are make_notebooks.py's cells, committed with outputs (``make notebooks``), none of them an error."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)  # writes nothing unless run as a script
    for name, want in gen.NOTEBOOKS.items():
        got = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert [c.source for c in got.cells] == [c.source for c in want.cells], f"{name}: rerun `make notebooks`"
        code = [c for c in got.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{name}: committed without outputs; run `make notebooks`"
        outputs = [o for c in code for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure in its outputs"
