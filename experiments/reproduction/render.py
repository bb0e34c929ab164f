"""Render docs/reproduction.md from the two reproduction sweeps (experiments/reproduction/table{1,5}.sh).

    .venv/bin/python experiments/reproduction/render.py --table1 outputs/table1 --table5 outputs/table5 \
        --out docs/reproduction.md

Every number comes from the runs' results.json (kasa.analysis.report.collect) and, for McNemar, their saved dev-set
predictions / generations; the statistics are kasa.analysis.stats'. Missing runs show as missing: the sweeps resume
across sessions, and the status line says how far they got. The reading (experiments/reproduction/reading.md) is
written by hand against these numbers and is included as it stands.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from kasa.analysis.report import collect
from kasa.analysis.report.tables import pooled_mcnemar
from kasa.analysis.stats import paired, summarise

HERE = Path(__file__).parent
T1_METHODS = ["fft", "bitfit", "adapter_h", "adapter_p", "adapter_l", "adapter_d", "lora", "adalora", "dylora",
              "pissa", "milora", "kasa"]
T1_TASKS = ["vader_movie5", "vader_tweets3", "vader_sst2"]
T1_PLANNED = 2 * 6 * 3 + 10 * 3 * 3  # KaSA and LoRA: 6 seeds x 3 tasks; the other ten rows: 3 x 3 (table1.sh)
T5_METHODS = ["zero-shot", "lora", "pissa", "milora", "dora", "kasa"]
T5_TASKS = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
T5_PLANNED = 1 + 5 * 3 + 3  # zero-shot, five methods x 3 seeds, KaSA truncation=none x 3 (table5.sh)


def _values(records, row: str, task: str) -> dict[int, float]:
    return {r.seed: r.value for r in records if r.row == row and r.task == task}


def _cell(by_seed: dict[int, float]) -> str:
    if not by_seed:
        return "—"
    s = summarise(by_seed)
    return f"{s.mean:.1f} ± {s.sd:.1f} (n={s.n})" if s.n > 1 else f"{s.mean:.1f} (n=1)"


def _avg(records, method: str, tasks: list[str]) -> dict[int, float]:
    """Per-seed average over the tasks, for seeds that have every task."""
    per = [_values(records, method, t) for t in tasks]
    seeds = set.intersection(*(set(p) for p in per)) if per else set()
    return {s: sum(p[s] for p in per) / len(per) for s in seeds}


def table(records, methods: list[str], tasks: list[str], title: str) -> list[str]:
    """Rows = methods with their trainable adapter parameters (results.json params.adapter), cells = mean ± SD."""
    out = [f"| {title} | adapter params | " + " | ".join(tasks) + " | Avg. |", "|---" * (len(tasks) + 3) + "|"]
    for m in methods:
        params = {r.params.get("adapter") for r in records if r.row == m and r.method != "zero-shot"} - {None}
        cells = [_cell(_values(records, m, t)) for t in tasks] + [_cell(_avg(records, m, tasks))]
        out.append(f"| {m} | {', '.join(f'{p:,}' for p in sorted(params)) or '—'} | " + " | ".join(cells) + " |")
    return out


def per_seed(records, methods: list[str], tasks: list[str]) -> list[str]:
    out = ["| method | task | values by seed |", "|---|---|---|"]
    for m in methods:
        for t in tasks:
            v = _values(records, m, t)
            if v:
                out.append(f"| {m} | {t} | " + " ".join(f"s{s}:{v[s]:.1f}" for s in sorted(v)) + " |")
    return out


def _g(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.3g}"


def _ci(ci: tuple[float, float]) -> str:
    return "—" if any(math.isnan(v) for v in ci) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


# Each run's saved dev-set correctness, read once per render (a row is paired with many others).
_CORRECTNESS: dict = {}
HEADER = ("| n | mean diff | 95% CI (t) | 95% CI (bootstrap) | p (t) | p (Wilcoxon) | MDE | McNemar b/c, p | "
          "reading |", "|---:|---:|---|---|---:|---:|---:|---|---|")


def _paired_cells(records, a_row: str, b_row: str, task: str, tasks: list[str], name: str) -> str | None:
    """``a_row - b_row`` on ``task`` (or "Avg." over ``tasks``), paired over shared seeds: the statistics cells,
    McNemar on the examples pooled over those seeds; None when no seed is shared."""
    a = _avg(records, a_row, tasks) if task == "Avg." else _values(records, a_row, task)
    b = _avg(records, b_row, tasks) if task == "Avg." else _values(records, b_row, task)
    p = paired(a, b)
    if p is None:
        return None
    mc = ""
    if task != "Avg.":  # kasa-report's pooling: the seeds where both runs saved predictions on the same dev set
        ra = {r.seed: r for r in records if r.row == a_row and r.task == task}
        rb = {r.seed: r for r in records if r.row == b_row and r.task == task}
        res, _used, _why = pooled_mcnemar(ra, rb, p.seeds, _CORRECTNESS)
        if res is not None:
            mc = f"{res.b}/{res.c}, {res.p:.3g}"
    lo, hi = p.t_ci
    if p.n < 2 or math.isnan(lo):
        reading = "one seed: no interval"
    elif p.t_p is None or math.isnan(p.t_p):  # SD 0: a zero-width interval is no evidence of a difference
        reading = "the same difference at every seed: no t-test"
    else:
        reading = f"{name} higher" if lo > 0 else f"{name} lower" if hi < 0 else "no difference shown"
    return (f"{p.n} | {p.mean:+.2f} | {_ci(p.t_ci)} | {_ci(p.bootstrap_ci)} | {_g(p.t_p)} | {_g(p.wilcoxon_p)} | "
            f"{_g(p.mde)} | {mc or '—'} | {reading} |")


def comparisons(records, methods: list[str], tasks: list[str], against: str | None = None) -> list[str]:
    """``against`` (default: the KaSA row) - each other row, paired over shared seeds, per task and on the average."""
    methods = rows_of(records, methods)
    against = against or kasa_row(methods)
    out = [f"| {against} − | task {HEADER[0]}", f"|---|---{HEADER[1]}"]
    for m in methods:
        if m == against:
            continue
        for t in [*tasks, "Avg."]:
            cells = _paired_cells(records, against, m, t, tasks, "KaSA" if against.startswith("kasa") else against)
            if cells is not None:
                out.append(f"| {m} | {t} | {cells}")
    return out


def against_baseline(records, methods: list[str], tasks: list[str], baseline: str = "lora") -> list[str]:
    """Each row - ``baseline`` on the average over ``tasks``, paired over shared seeds (the per-task pairs of the
    KaSA rows are in :func:`comparisons`)."""
    out = [f"| row − {baseline} (Avg.) {HEADER[0]}", f"|---{HEADER[1]}"]
    for m in rows_of(records, methods):
        cells = None if m == baseline else _paired_cells(records, m, baseline, "Avg.", tasks, "row")
        if cells is not None:
            out.append(f"| {m} | {cells}")
    return out


def rows_of(records, methods: list[str]) -> list[str]:
    """The table rows present (method, plus the knob that tells a method's configurations apart), in ``methods``'
    order; every planned method appears, missing ones as empty rows."""
    present = {r.row: r.method for r in records}
    for m in methods:
        if m not in present.values():
            present[m] = m
    return sorted(present, key=lambda row: (methods.index(present[row]) if present[row] in methods else 99, row))


def kasa_row(rows: list[str]) -> str:
    """The paper's KaSA row: ``kasa``, or ``kasa (truncation=paper)`` beside other KaSA variants."""
    return next((r for r in rows if r in ("kasa", "kasa (truncation=paper)")), "kasa")


def status(records, planned: int, sweep: Path) -> str:
    by_run = {r.source: r for r in records}
    wall = sum(r.wall_time_s or 0 for r in by_run.values())
    return (f"{len(by_run)} of {planned} planned runs finished; their wall_time_s sum to {wall / 3600:.2f} h "
            f"(sweep folder `{sweep}`)")


def figures(sweep: Path, dest: Path, doc_dir: Path, kinds: tuple[str, ...]) -> list[str]:
    """Copy the sweep's kasa-report figures (PNG) of ``kinds`` (forest, curves, tradeoff) beside the docs and link
    them."""
    import os
    import shutil

    pngs = sorted(p for p in (sweep / "report" / "plots").glob("*.png") if p.stem.rsplit("_", 1)[-1] in kinds)
    if not pngs:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    out = [f"### Figures (`kasa-report {sweep} --plots`: learning curves, accuracy against trainable parameters "
           "with the Pareto front, forest plot of the paired differences against LoRA)\n"]
    for png in pngs:
        shutil.copyfile(png, dest / png.name)
        out.append(f"![{png.stem}]({os.path.relpath(dest / png.name, doc_dir)})")
    return [*out, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table1", type=Path, default=Path("outputs/table1"))
    ap.add_argument("--table5", type=Path, default=Path("outputs/table5"))
    ap.add_argument("--out", type=Path, default=Path("docs/reproduction.md"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"),
                    help="where the PNGs of each sweep's `kasa-report --plots` (SWEEP/report/plots) are copied")
    a = ap.parse_args()
    head = (HERE / "head.md").read_text()
    parts = [head.rstrip() + "\n"]
    # Table 5 trains one epoch: its curves are single points, and eight per-task trade-off plots say what its
    # table says; the forest plot carries the paired differences
    for name, sweep, methods, tasks, planned, kinds in (
            ("Table 1-style: MiniLM, three sentiment tasks", a.table1, T1_METHODS, T1_TASKS, T1_PLANNED,
             ("forest", "curves", "tradeoff")),
            ("Table 5-style: SmolLM2-135M-Instruct, commonsense suite", a.table5, T5_METHODS, T5_TASKS, T5_PLANNED,
             ("forest",))):
        last, _ = collect([sweep]) if sweep.exists() else ([], [])
        best, _ = collect([sweep], selection="best") if sweep.exists() else ([], [])
        rows = rows_of(last, methods)
        parts += [f"## {name}\n", f"Status: {status(last, planned, sweep)}.\n",
                  "### Last epoch (reported): mean ± SD over seeds (n), accuracy %\n",
                  *table(last, rows, tasks, "method"), "",
                  "### Best epoch (labelled: picked on the same split that scores it, optimistic)\n",
                  *table(best, rows, tasks, "method (best epoch)"), "",
                  "### KaSA against each method, paired by seed (last epoch)\n",
                  "Mean of per-seed differences in points; t and percentile-bootstrap 95% intervals; paired t and "
                  "Wilcoxon p; MDE: the smallest true difference the paired t-test detects with power 0.8 at alpha "
                  "0.05 given the observed SD of the differences; McNemar on the examples pooled over the shared "
                  "seeds (b: only KaSA right, c: only the other method right; pooling repeats each example once per "
                  "seed, so its p is optimistic). Reading: \"KaSA higher/lower\" when the t interval excludes 0.\n",
                  *comparisons(last, methods, tasks), "",
                  *sum(([f"### {row} against each method, paired by seed (last epoch)\n",
                         *comparisons(last, methods, tasks, against=row), ""]
                        for row in rows if row.startswith("kasa (") and row != kasa_row(rows)), []),
                  "### Every row against LoRA on the average, paired by seed (last epoch)\n",
                  "As above, each row minus LoRA on the per-seed average over the tasks; \"row higher/lower\" "
                  "when the t interval excludes 0.\n",
                  *against_baseline(last, methods, tasks), "",
                  "### Per-seed values (last epoch)\n", *per_seed(last, rows, tasks), "",
                  *figures(sweep, a.figures, a.out.parent, kinds)]
    reading = HERE / "reading.md"
    if reading.exists():
        parts.append(reading.read_text().rstrip() + "\n")
    a.out.write_text("\n".join(parts))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
