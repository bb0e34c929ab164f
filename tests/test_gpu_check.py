"""scripts/gpu_check.sh in dry mode (``--dry``; ``GPU_CHECK_DRY=1`` sets the same flag) on the CPU: every part is
listed, every kasa-train command composes (the quantised steps included), nothing runs; and its compose checker on its
own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kasa.perf.gpu_check import compose_status

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
TRAIN_PARTS = ["train_classification", "train_e2e", "train_commonsense", "train_instruction"]
QUANT_PARTS = ["quant_lora", "quant_kasa"]
OTHER_PARTS = ["perf_steps", "planner_cuda", "planner_test", "perf_methods", "perf_throughput", "perf_generation"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=300)


def _rows(summary: str) -> dict[str, list[str]]:
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("part",):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow  # composes and validates every kasa-train command of the script (~14 s): make test-slow
def test_dry_mode_lists_every_part_and_composes_the_training_commands(tmp_path):
    out = tmp_path / "gpu"
    res = _run("--dry", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows((out / "summary.md").read_text())
    assert list(rows) == ["perf_steps", *TRAIN_PARTS, *QUANT_PARTS, "planner_cuda", "planner_test", "perf_methods",
                          "perf_throughput", "perf_generation"]
    for name in TRAIN_PARTS:
        assert rows[name][4] == "dry: composes", rows[name]
    for name in QUANT_PARTS:
        assert rows[name][4] == "dry: composes", rows[name]
    for name in OTHER_PARTS:
        assert rows[name][4] == "dry: not run"
    for name, cells in rows.items():
        assert cells[2] == "-" and cells[3] == "-"  # no exit code, no wall time: nothing ran
        logged = (out / f"{name}.log").read_text()
        assert f"== {name}: {logged.strip()}" in res.stdout  # the command printed is the one logged
    assert "--full --skip-methods" in (out / "perf_steps.log").read_text()
    assert "--full --skip-truncation" in (out / "perf_methods.log").read_text()
    assert "--throughput --full --tp-compile inductor" in (out / "perf_throughput.log").read_text()
    assert "--generation --full" in (out / "perf_generation.log").read_text()
    for name in TRAIN_PARTS + QUANT_PARTS:
        cmd = (out / f"{name}.log").read_text()
        assert "trainer.max_epochs=1" in cmd and "trainer.limit_train_batches=2" in cmd
        assert f"hydra.run.dir={out}" in cmd
        assert not (out / name).exists()  # nothing trained
    assert "model.quantization=nf4" in (out / "quant_kasa.log").read_text()


def test_bad_arguments_are_one_line(tmp_path):
    for args, env, msg in [(["--fast"], {}, "unknown option --fast"),
                           ([str(tmp_path / "b"), str(tmp_path / "c")], {}, "one output folder only"),
                           ([str(tmp_path / "d")], {"GPU_CHECK_DRY": "yes"}, "GPU_CHECK_DRY=yes (use 0 or 1)"),
                           (["--dry", str(tmp_path / "e")], {"GPU_CHECK_BUDGET": "8m"}, "GPU_CHECK_BUDGET=8m")]:
        res = _run(*args, **env)
        assert res.returncode == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without CUDA")
def test_real_mode_refuses_without_cuda(tmp_path):
    res = _run(str(tmp_path / "x"))
    assert res.returncode == 2 and "no CUDA device" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_compose_status():
    assert compose_status(["model=minilm", "trainer.max_epochs=1"]) == ("ok",
                                                                        "composes and passes kasa.config.validate")
    status, reason = compose_status(["model=minilm", "trainer.max_epochs=abc"])
    assert status == "error" and "max_epochs" in reason
    assert compose_status(["model=nope"])[0] == "error"
    assert compose_status(["model=smollm2", "method=lora", "model.quantization=nf4"])[0] == "ok"
    status, reason = compose_status(["model=smollm2", "method=fft", "model.quantization=nf4"])
    assert status == "error" and "method=fft trains the base model's own weights" in reason
