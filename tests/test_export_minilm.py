"""End to end on the real MiniLM (the `make train` setting, one short epoch): train, export in every format, load each
in a fresh process that cannot import kasa, compare logits on real-style snippets; kasa-eval reproduces the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.recipe import run
from kasa.runs.evaluate import evaluate_run
from kasa.runs.export import export_run
from kasa.runs.load import load_run

pytest.importorskip("peft")
TEXTS = ["a gorgeous, witty, seductive movie", "the plot is nothing but boilerplate clichés", "it is what it is"]

LOADER = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoKasa(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "kasa":
                raise ImportError("kasa must not be needed")

    sys.meta_path.insert(0, NoKasa())
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, base, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(root + "/merged")  # the tokenizer ships with the merged model
    x = tok(texts, padding=True, return_tensors="pt")
    out = {}
    for fmt in ("peft", "lora", "merged"):
        if fmt == "merged":
            model = AutoModelForSequenceClassification.from_pretrained(root + "/merged")
        else:
            model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=5),
                                              root + "/" + fmt)
        with torch.no_grad():
            out[fmt] = model.eval()(**x).logits.tolist()
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_minilm_run_leaves_kasa_in_every_format(tmp_path):
    from kasa.assets import minilm_path

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.max_epochs=1", "trainer.limit_train_batches=8",
                                          "trainer.enable_progress_bar=false"])
    res = run(cfg, run_dir=tmp_path / "run")
    ref = load_run(tmp_path / "run")
    for fmt in ("peft", "lora", "merged"):
        export_run(tmp_path / "run", fmt, tmp_path / "exports" / fmt)
    x = ref.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = ref.model(**x).logits
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    (tmp_path / "loader.py").write_text(LOADER)
    proc = subprocess.run([sys.executable, str(tmp_path / "loader.py"), str(tmp_path / "exports"), str(minilm_path()),
                           json.dumps(TEXTS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for fmt, logits in got.items():
        diff = (torch.tensor(logits) - want).abs().max().item()
        assert diff <= 1e-5, f"{fmt}: {diff:.2e}"
    assert evaluate_run(tmp_path / "run")["metrics"] == res["metrics"]["best"]
