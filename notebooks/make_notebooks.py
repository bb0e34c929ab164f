"""Regenerates the notebooks in this folder (python notebooks/make_notebooks.py); edit here, not in the .ipynb."""
import nbformat as nbf
from pathlib import Path

SETUP = '''import os, tempfile
from pathlib import Path
import matplotlib
matplotlib.use("Agg")  # headless: figures go to PNG files
import matplotlib.pyplot as plt
import numpy as np
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

The learned singular values dsigma per layer and module over training, the drift of dU and dV from
orthonormality (the quantities L3 penalises), and the spectra of the original weight W, the truncated base
W_world = W - U_t S_t V_t^T and W_world + dW.

Set `KASA_RUN_DIR` to a run trained with `analysis.spectra=true` (it needs `results.json`, `spectra/` and
`checkpoints/last.ckpt`); without it the notebook trains a tiny offline run. Figures go to
`KASA_FIGURES_DIR` (default `figures/`).""", [
SETUP,
'''from kasa.analysis.spectra import load_spectra, load_run_model, weight_spectra, orthonormality_drift, short_name

RUN = os.environ.get("KASA_RUN_DIR")
if RUN:
    run_dir = Path(RUN)
else:
    from kasa.analysis.tiny import tiny_run
    run_dir = Path(tempfile.mkdtemp(prefix="kasa-spectra-"))
    tiny_run(run_dir, "method.r=4", "analysis.spectra=true", "trainer.max_epochs=3")
records = load_spectra(run_dir / "spectra")
print(run_dir, [r["epoch"] for r in records])''',
'''# dsigma and the orthonormality drift over training, one line per adapted module
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
epochs = [r["epoch"] for r in records]
for name in records[-1]["dsigma"]:
    axes[0].plot(epochs, [np.abs(r["dsigma"][name]).mean() for r in records], marker="o", label=short_name(name))
for name in records[-1]["drift"]:
    axes[1].plot(epochs, [r["drift"][name]["dU"] for r in records], marker="o", label=short_name(name))
    axes[2].plot(epochs, [r["drift"][name]["dV"] for r in records], marker="o", label=short_name(name))
for ax, t in zip(axes, ["mean |dsigma|", "||dU^T dU - I||_F", "||dV^T dV - I||_F"]):
    ax.set_title(t); ax.set_xlabel("epoch (-1: before training)")
axes[0].legend(fontsize=7)
fig.tight_layout()
fig.savefig(FIG / "spectra_dsigma_drift.png", dpi=120)''',
'''# spectra of W, W_world and W_world + dW for every adapted module of the trained model
model, method = load_run_model(run_dir)
spec = weight_spectra(model)
names = list(spec)
fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
for ax, name in zip(axes[0], names):
    for key, style in (("W", "-"), ("W_world", "--"), ("W_plus_dW", ":")):
        ax.semilogy(spec[name][key], style, label=key)
    ax.set_title(short_name(name), fontsize=8)
axes[0][0].legend(fontsize=7)
fig.tight_layout()
fig.savefig(FIG / "spectra_weights.png", dpi=120)
for name in names:
    s = spec[name]
    print(f"{short_name(name)}: smallest of W {s['W'][-1]:.3g}, of W_world {s['W_world'][-1]:.3g}; "
          f"drift {orthonormality_drift(model)[name]}")''',
])

heat = nb("""# Heatmap of the learned singular values (the paper's MNLI vs QQP figure)

|dsigma| per layer and module (rows) and singular-value index (columns) at the end of training, two tasks
side by side. For the paper's figure train `kasa-train experiment=sv_heatmap dataset=glue_mnli` and
`dataset=glue_qqp` and set `KASA_HEATMAP_RUNS=<mnli run dir>,<qqp run dir>`. Without it, two tiny offline
runs stand in (BIG-bench presuppositions_as_nli, an NLI task, and intent_recognition).""", [
SETUP,
'''from kasa.analysis.spectra import load_spectra, heatmap_matrix

RUNS = os.environ.get("KASA_HEATMAP_RUNS")
if RUNS:
    run_dirs = {Path(p).name: Path(p) for p in RUNS.split(",")}
else:
    from kasa.analysis.tiny import tiny_run
    base = Path(tempfile.mkdtemp(prefix="kasa-heatmap-"))
    run_dirs = {}
    for ds in ("presuppositions_as_nli", "intent_recognition"):
        tiny_run(base / ds, f"dataset={ds}", "method.r=4", "analysis.spectra=true", "trainer.max_epochs=2",
                 "trainer.limit_train_batches=2")
        run_dirs[ds] = base / ds
print(run_dirs)''',
'''fig, axes = plt.subplots(1, len(run_dirs), figsize=(5 * len(run_dirs), 3.5), squeeze=False)
for ax, (label, d) in zip(axes[0], run_dirs.items()):
    last = load_spectra(d / "spectra")[-1]
    rows, mat = heatmap_matrix(last["dsigma"])
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("singular value index i")
    ax.set_title(f"{label}: |dsigma|, epoch {last['epoch']}", fontsize=9)
    fig.colorbar(im, ax=ax)
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
fig.savefig(FIG / "ablation.png", dpi=120)''',
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

for name, n in (("spectra_of_a_trained_run", spectra), ("sv_heatmap", heat), ("ablation_and_rank_sweep", abl)):
    nbf.write(n, Path(__file__).resolve().parent / f"{name}.ipynb")
