"""Numbers the docs state about the project agree with each other and with the code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["README.md", "pyproject.toml", "kasa/__init__.py", "CONTRIBUTING.md", *sorted(
    str(p.relative_to(REPO)) for p in [*REPO.glob("docs/*.md"), *REPO.glob("experiments/**/*.md")])]


def test_the_baseline_count_matches_the_registry_and_names_full_fine_tuning():
    from kasa.methods import REGISTRY

    baselines = len(REGISTRY) - 2  # KaSA itself and full fine-tuning are not baselines
    seen = 0
    for rel in TEXTS:
        path = REPO / rel
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            for m in re.finditer(r"(\d+) (?:PEFT )?baselines", line):
                seen += 1
                assert int(m.group(1)) == baselines, f"{rel}: {line.strip()}"
                assert "full fine-tuning" in line, f"{rel}: a count of baselines beside a list that has FFT: {line}"
    assert seen


def test_the_mini_reproduction_time_is_the_measured_one_everywhere():
    measured = re.search(r"\((\d+) s = (\d+) min\)", (REPO / "docs" / "mini_six_methods.md").read_text())
    assert measured, "docs/mini_six_methods.md records the driver's wall time"
    minutes = int(measured.group(2))
    places = ["README.md", "experiments/mini/README.md", "conf/experiment/mini.yaml"]
    for rel in places:
        text = (REPO / rel).read_text()
        assert not re.search(r"about (an|1) h(ou)?r?\b", text), f"{rel} still says about an hour"
        assert f"{minutes} min" in text, f"{rel} does not state the measured {minutes} min"
