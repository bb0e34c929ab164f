"""`python -m kasa.perf --tiny` runs end to end and reports every section (no timing assertions)."""

from __future__ import annotations

import re

import pytest

from kasa.perf.__main__ import main as perf_main
from kasa.perf.core import LABELS, PROFILES
from kasa.perf.methods import ALL_METHODS, METHOD_LABELS, PEFT_PEERS


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bench") / "bench.md"
    perf_main(["--tiny", "--out", str(out)])
    return out.read_text()


def test_every_section_and_method_is_reported(report):
    for heading in ("Training step", "Memory per training step", "Regulariser", "Merged inference",
                    "KaSA truncation", "Every method", "Lightning step vs bare PyTorch loop"):
        assert f"### {heading}" in report
    for label in LABELS.values():
        assert f"| {label} |" in report
    assert "KaSA (ours) / HF PEFT KaSA:" in report


def test_numbers_are_finite_and_ratios_consistent(report):
    rows = [line for line in report.splitlines() if line.startswith("| frozen model (floor) |")]
    assert rows and rows[0].split("|")[4].strip() == "1.000"  # the floor against itself
    for line in report.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            assert "nan" not in line.lower() and "inf" not in line.lower(), line
    # the truncation table used the fast path and agrees with the full SVD
    trunc = [line for line in report.splitlines() if re.match(r"\| \d+ x \d+ \|", line)]
    assert len(trunc) == len(PROFILES["tiny"].trunc_shapes)
    for line in trunc:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] in ("gram", "svd") and float(cells[5]) < 1e-4


def test_memory_counts_adapter_state(report):
    section = report.split("### Memory per training step")[1].split("###")[0]
    kasa_row = next(line for line in section.splitlines() if line.startswith("| KaSA (ours) |"))
    frozen_row = next(line for line in section.splitlines() if line.startswith("| frozen model (floor) |"))
    assert kasa_row.split("|")[2].strip() != "0 B" and frozen_row.split("|")[2].strip() == "0 B"


def test_every_method_and_peft_peer_has_a_row_over_the_floor(report):
    section = report.split("### Every method")[1].split("###")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    expected = ALL_METHODS + [METHOD_LABELS[n] for n in PEFT_PEERS]
    assert list(rows) == expected
    for name, line in rows.items():
        assert "failed" not in line, line
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[2]) > 0 and int(cells[4].replace(",", "")) > 0, line
    lora = [c.strip() for c in rows["lora"].strip("|").split("|")]
    assert lora[3] == "1.00" and lora[7] == "1.000"  # LoRA against itself


def test_whole_model_truncation_is_timed_end_to_end(report):
    m = re.search(r"on a (\d+)-layer model of this shape \((\d+) q/k/v/up/down weights\): \*\*([0-9.]+) s\*\*", report)
    assert m and int(m.group(1)) == PROFILES["tiny"].trunc_model_layers and int(m.group(2)) == 5 * 2
    assert PROFILES["full"].trunc_model_layers == 32  # the 7B target: all 32 layers
