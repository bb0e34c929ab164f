"""Regenerates the notebooks in this folder (python notebooks/make_notebooks.py); edit here, not in the .ipynb.

`make notebooks` regenerates them, trains the offline MiniLM runs they read (if missing) and executes them in
place, so the committed .ipynb carry the outputs of those runs; tests/test_notebooks.py executes them headless on
tiny runs instead.
"""
from pathlib import Path

import nbformat as nbf

SETUP = '''import os, tempfile
from pathlib import Path
import matplotlib
matplotlib.use("Agg")  # headless: figures go to PNG files (and inline when a kernel shows them)
import matplotlib.pyplot as plt
import numpy as np
%matplotlib inline
os.environ.setdefault("HF_HUB_OFFLINE", "1")
FIG = Path(os.environ.get("KASA_FIGURES_DIR", "figures"))
FIG.mkdir(parents=True, exist_ok=True)'''


def nb(title, cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(title)] + [
        nbf.v4.new_markdown_cell(c[2:]) if c.startswith("# ") and "\n" not in c else nbf.v4.new_code_cell(c)
        for c in cells]
    return n


spectra = nb("""# Spectra of a trained KaSA run

What the adapter learned and what the truncation cut, per layer and module:

- the singular values of the learned update dW = (alpha/r) dU diag(dsigma) dV^T (scaled as in the forward) and
  the change of dsigma from its N(0, 1) initialisation, over training and as heatmaps. Not |dsigma|: dsigma
  starts at N(0, 1) and moves little, so |dsigma| mostly shows the initial draw (checked below), and with dU, dV
  not orthonormal |dsigma_i| is not a singular value of dW;
- the drift of dU and dV from orthonormality (what L3 penalises);
- the tail of each weight's spectrum, W against W_world = W - U_t S_t V_t^T (log scale, removed triplets marked).

`make notebooks` trains the run it reads (KaSA on the offline all-MiniLM-L6-v2, the default vader_movie5,
3 epochs, seed 0, `analysis.spectra=true`) and executes this notebook in place. Set `KASA_RUN_DIR` to another run
trained with `analysis.spectra=true` (it needs `results.json`, `spectra/` and `checkpoints/last.ckpt`); without it
the notebook trains a tiny offline run. Figures go to `KASA_FIGURES_DIR` (default `figures/`).""", [
SETUP,
'''import json
from kasa.runs.load import load_run
from kasa.analysis.spectra import (dsigma_change, load_spectra, plot_heatmap, plot_spectrum_tails,
                                   removed_ranks, short_name, weight_spectra)

RUN = os.environ.get("KASA_RUN_DIR")
if RUN:
    run_dir = Path(RUN)
else:
    from kasa.analysis.tiny import tiny_run
    run_dir = Path(tempfile.mkdtemp(prefix="kasa-spectra-"))
    tiny_run(run_dir, "method.r=4", "analysis.spectra=true", "trainer.max_epochs=3")
res = json.loads((run_dir / "results.json").read_text())
records = load_spectra(run_dir / "spectra")
mon = res["metrics"]["monitor"]
print(f"{res['method']} r={res['config']['method']['r']} truncation={res['config']['method']['truncation']} on "
      f"{res['config']['model']['name']} / {res['dataset']}, seed {res['seed']}: {mon} final "
      f"{res['metrics']['final'][mon]:.4f}, best {res['metrics']['best'][mon]:.4f}; spectra at epochs "
      f"{[r['epoch'] for r in records]}")''',
'''# Why not |dsigma|: how much of it is still the initial N(0, 1) draw?
init, last = records[0]["dsigma"], records[-1]["dsigma"]
a0 = np.concatenate([np.abs(init[n]) for n in last])
a1 = np.concatenate([np.abs(last[n]) for n in last])
change = dsigma_change(records)
ch = np.concatenate([np.abs(v) for v in change.values()])
print(f"corr(|dsigma| at the end, |dsigma| at init) = {np.corrcoef(a0, a1)[0, 1]:.4f} over {a0.size} values; "
      f"mean |dsigma| {a1.mean():.3f}, mean |dsigma - dsigma_init| {ch.mean():.4f}")''',
'''# Over training, one line per adapted module: how far dsigma moved, the largest singular value of dW, the drift
epochs = [r["epoch"] for r in records]
fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
for name in records[-1]["update"]:
    lab = short_name(name)
    if name in records[-1]["dsigma"]:
        axes[0].plot(epochs, [np.linalg.norm(dsigma_change(records, i)[name]) for i in range(len(records))],
                     marker="o", label=lab)
    axes[1].plot(epochs, [r["update"][name][0] for r in records], marker="o", label=lab)
    axes[2].plot(epochs, [r["drift"][name]["dU"] for r in records], marker="o", label=lab)
    axes[3].plot(epochs, [r["drift"][name]["dV"] for r in records], marker="o", label=lab)
for ax, t in zip(axes, ["||dsigma - dsigma_init||", "largest singular value of dW", "||dU^T dU - I||_F",
                        "||dV^T dV - I||_F"]):
    ax.set_title(t, fontsize=9)
    ax.set_xlabel("epoch (-1: before the first step)")
    ax.set_ylim(bottom=0)
axes[1].legend(fontsize=6, ncol=2)
fig.tight_layout()
fig.savefig(FIG / "spectra_training.png", dpi=120)''',
'''# The heatmaps: singular values of dW and the change of dsigma, per layer and module, at the last record
fig, axes = plt.subplots(1, 2, figsize=(11, 0.28 * len(records[-1]["update"]) + 1.8))
plot_heatmap(records[-1]["update"], ax=axes[0], title=f"singular values of dW, epoch {records[-1]['epoch']}",
             label="s_i(dW)")
if change:
    plot_heatmap(change, ax=axes[1], diverging=True, title="dsigma - dsigma_init", label="change")
else:
    axes[1].axis("off")
fig.tight_layout()
fig.savefig(FIG / "spectra_update.png", dpi=120)
for name, sv in records[-1]["update"].items():
    sv = np.asarray(sv)
    print(f"{short_name(name):10s} s(dW) = {np.array2string(sv, precision=3, max_line_width=200)}  "
          f"s2/s1 = {sv[1] / sv[0]:.2f}")''',
'''# The tail of the spectrum: W against W_world, the t removed triplets marked (what KaSA cuts)
run = load_run(run_dir, "last", keep_removed=True)  # KaSA: W's spectrum exactly, removed factors re-derived
model, method = run.model, run.method
spec, removed = weight_spectra(model), removed_ranks(model)
fig = plot_spectrum_tails(spec, removed)
fig.savefig(FIG / "spectra_tail.png", dpi=120)
for name, s in spec.items():
    t = removed[name]
    cut = 1 - np.sum(s["W_world"] ** 2) / np.sum(s["W"] ** 2)
    print(f"{short_name(name):10s} t={t}: smallest kept {s['W_world'][len(s['W_world']) - t - 1]:.3g}, removed "
          f"{np.array2string(s['W'][len(s['W']) - t:], precision=3)}, {100 * cut:.2g}% of ||W||_F^2")''',
])

heat = nb("""# Heatmaps of what KaSA learned, run against run (the paper's MNLI vs QQP figure)

One column per run: the singular values of the learned update dW = (alpha/r) dU diag(dsigma) dV^T per layer and
module (top) and the change of dsigma from its initialisation (bottom), at the end of training. The paper plots
dsigma itself; dsigma starts at N(0, 1) and moves little, so a plot of |dsigma| mostly shows the initial draw
(see spectra_of_a_trained_run.ipynb).

`make notebooks` runs it on three offline MiniLM runs of vader_movie5 (3 epochs, seed 0; truncation=paper,
activation_aware, none). For the paper's figure train `kasa-train experiment=sv_heatmap dataset=glue_mnli` and
`dataset=glue_qqp` and set `KASA_HEATMAP_RUNS=<mnli run dir>,<qqp run dir>`. Without it, two tiny offline runs
stand in (the project-made ratings of `kasa.analysis.tiny` in 5 classes and in 2).""", [
SETUP,
'''import json
from kasa.analysis.spectra import dsigma_change, load_spectra, plot_heatmap

RUNS = os.environ.get("KASA_HEATMAP_RUNS")
if RUNS:
    run_dirs = [Path(p) for p in RUNS.split(",")]
else:
    from kasa.analysis.tiny import tiny_run
    base = Path(tempfile.mkdtemp(prefix="kasa-heatmap-"))
    run_dirs = []
    for classes in (5, 2):
        tiny_run(base / f"classes{classes}", f"dataset.source_args.classes={classes}", "method.r=4",
                 "analysis.spectra=true", "trainer.max_epochs=2", "trainer.limit_train_batches=2")
        run_dirs.append(base / f"classes{classes}")
labels = []
for d in run_dirs:
    res = json.loads((d / "results.json").read_text())
    m = res["metrics"]
    classes = (res["config"]["dataset"].get("source_args") or {}).get("classes")
    labels.append(f"{res['dataset']}{f' ({classes} classes)' if classes else ''}, "
                  f"truncation={res['config']['method']['truncation']}")
    print(f"{labels[-1]}: {m['monitor']} final {m['final'][m['monitor']]:.4f}, best {m['best'][m['monitor']]:.4f} "
          f"(epoch {m['best_epoch']})")''',
'''fig, axes = plt.subplots(2, len(run_dirs), figsize=(4.8 * len(run_dirs), 8), squeeze=False)
for j, (label, d) in enumerate(zip(labels, run_dirs)):
    recs = load_spectra(d / "spectra")
    plot_heatmap(recs[-1]["update"], ax=axes[0][j], label="s_i(dW)",
                 title=f"{label}\\nsingular values of dW, epoch {recs[-1]['epoch']}")
    plot_heatmap(dsigma_change(recs), ax=axes[1][j], diverging=True, title="dsigma - dsigma_init", label="change")
fig.tight_layout()
fig.savefig(FIG / "sv_heatmap.png", dpi=120)''',
])

abl = nb("""# Component ablation and rank sweep

Reads `results.json` files with `kasa.analysis.report` (the `kasa-report` tables) and plots (a) KaSA's
components added one at a time (truncation + LoRA -> + learnable singular values -> + L2 -> + L3) per task
and (b) the validation metric against the rank r for KaSA and the baselines.

For the paper's figures run the sweeps in `experiments/` (`component_ablation`, `rank_sweep`) and set
`KASA_RUNS_DIR` to their folder. Without it, tiny offline runs stand in (one epoch each).""", [
SETUP,
'''from kasa.analysis.report import collect, build_tables, load_paper_numbers, to_markdown

RUNS = os.environ.get("KASA_RUNS_DIR")
if RUNS:
    runs_dir = Path(RUNS)
else:
    from kasa.analysis.tiny import tiny_run
    runs_dir = Path(tempfile.mkdtemp(prefix="kasa-ablation-"))
    short = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    stages = {"lora": ("method.singular_values=off", "method.beta=0", "method.gamma=0"),
              "learnable_sv": ("method.beta=0", "method.gamma=0"),
              "l2": ("method.gamma=0",),
              "l3": ()}
    for stage, ov in stages.items():
        tiny_run(runs_dir / f"ablation-{stage}", *short, "method.r=4", "+study.table=component_ablation",
                 f"+study.stage={stage}", *ov)
    for m in ("kasa", "lora"):
        for r in (1, 4):
            tiny_run(runs_dir / f"rank-{m}-{r}", *short, f"method={m}", f"method.r={r}", "+study.table=rank_sweep")
recs, _ = collect([runs_dir], load_paper_numbers())
tables = {t.key: t for t in build_tables(recs)}
print(sorted(tables))''',
'''# (a) component ablation: one bar group per task, stages in the paper's order
order = ["lora", "learnable_sv", "l2", "l3"]
abl = [r for r in recs if r.table == "component_ablation"]
tasks = sorted({r.task for r in abl})
fig, ax = plt.subplots(figsize=(6, 3.2))
for i, stage in enumerate(order):
    vals = [np.median([r.value for r in abl if r.task == t and r.variant == f"stage={stage}"] or [np.nan]) for t in tasks]
    ax.bar(np.arange(len(tasks)) + 0.2 * i, vals, width=0.2, label=stage)
ax.set_xticks(np.arange(len(tasks)) + 0.3, tasks)
ax.set_ylabel(abl[0].metric if abl else "metric"); ax.legend(fontsize=7); ax.set_title("component ablation")
fig.tight_layout()
fig.savefig(FIG / "ablation.png", dpi=120)''',  # noqa: E501  (cell source, as in the .ipynb)
'''# (b) rank sweep: metric against r, one line per (method, task)
rank = [r for r in recs if r.table == "rank_sweep"]
fig, ax = plt.subplots(figsize=(6, 3.2))
for m in sorted({r.method for r in rank}):
    for t in sorted({r.task for r in rank}):
        pts = sorted((int(r.variant.split("r=")[1].split(",")[0]), r.value) for r in rank
                     if r.method == m and r.task == t and "r=" in r.variant)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{m} {t}")
ax.set_xscale("log", base=2); ax.set_xlabel("rank r"); ax.legend(fontsize=7); ax.set_title("rank sweep")
fig.tight_layout()
fig.savefig(FIG / "rank_sweep.png", dpi=120)
print(to_markdown(list(tables.values())))''',
])

NOTEBOOKS = {"spectra_of_a_trained_run": spectra, "sv_heatmap": heat, "ablation_and_rank_sweep": abl}


def execute_in_place(paths, timeout: int = 1800) -> None:
    """Execute notebooks in place (outputs kept in the .ipynb) with a kernel running this very interpreter."""
    import json
    import os
    import sys
    import tempfile

    import nbclient

    with tempfile.TemporaryDirectory() as root:
        spec = Path(root) / "kernels" / "kasa-python"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3", "language": "python"}))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [root, os.environ.get("JUPYTER_PATH")]))
        for path in paths:
            path = Path(path)
            n = nbf.read(path, as_version=4)
            nbclient.NotebookClient(n, kernel_name="kasa-python", timeout=timeout,
                                    resources={"metadata": {"path": str(path.parent)}}).execute()
            n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            nbf.write(n, path)
            print(f"executed {path}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the notebooks (and execute them in place with --execute)")
    ap.add_argument("--execute", action="store_true",
                    help="execute in place; KASA_RUN_DIR, KASA_HEATMAP_RUNS, KASA_RUNS_DIR choose the runs")
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    for name, n in NOTEBOOKS.items():
        nbf.write(n, here / f"{name}.ipynb")
    if args.execute:
        execute_in_place([here / f"{name}.ipynb" for name in NOTEBOOKS])
