"""Spectra analysis: W / W_world / W + dW, orthonormality drift, heatmap, and the callback in a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_bert
from hydra import compose, initialize_config_dir

from kasa.analysis.spectra import (heatmap_matrix, learned_singular_values, load_run_model, load_spectra,
                                   orthonormality_drift, weight_spectra)
from kasa.methods import build_method
from kasa.train import CONF_DIR, run


def tiny_bert_seeded():
    torch.manual_seed(0)
    return tiny_bert()


def test_spectra_of_w_w_world_and_w_plus_dw():
    model = tiny_bert_seeded()
    name = "bert.encoder.layer.0.attention.self.query"
    s_orig = torch.linalg.svdvals(model.get_submodule(name).weight.detach().double()).numpy()
    method = build_method("kasa", r=4, alpha=8, target_modules=["query", "value"])
    method.apply(model)
    spec = weight_spectra(model)
    assert len(spec) == 4
    s = spec[name]
    np.testing.assert_allclose(s["W"], s_orig, rtol=1e-5, atol=1e-5)  # W rebuilt from W_world + removed part
    np.testing.assert_allclose(s["W_world"][:-4], s_orig[:-4], rtol=1e-5, atol=1e-5)  # top k - r kept
    assert np.all(s["W_world"][-4:] < 1e-5)  # the r smallest removed
    np.testing.assert_allclose(s["W_plus_dW"], s["W_world"], atol=1e-6)  # dU = 0 at init
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.lora_B.normal_()
    s2 = weight_spectra(model)[name]
    assert not np.allclose(s2["W_plus_dW"], s2["W_world"])
    method.merge(model)  # merged: W_world is recovered by taking dW back out
    np.testing.assert_allclose(weight_spectra(model)[name]["W_world"], s["W_world"], rtol=1e-4, atol=1e-4)
    # keep_removed=true rebuilds W itself from the factors: the same spectrum
    kept = build_method("kasa", r=4, alpha=8, target_modules=["query"], keep_removed=True).apply(tiny_bert_seeded())
    np.testing.assert_allclose(weight_spectra(kept)[name]["W"], s_orig, rtol=1e-5, atol=1e-5)


def test_drift_and_learned_singular_values():
    torch.manual_seed(0)
    model = build_method("kasa", r=4, target_modules=["query", "value"]).apply(tiny_bert())
    drift = orthonormality_drift(model)
    assert all(d["dU"] == pytest.approx(2.0) for d in drift.values())  # ||0 - I_4||_F
    layer = model.get_submodule("bert.encoder.layer.1.attention.self.value")
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(layer.lora_B.shape[0], 4))
        layer.lora_B.copy_(q)
        layer.lora_A.copy_(torch.linalg.qr(torch.randn(layer.lora_A.shape[1], 4))[0].T)
    d = orthonormality_drift(model)["bert.encoder.layer.1.attention.self.value"]
    assert d["dU"] < 1e-5 and d["dV"] < 1e-5
    ds = learned_singular_values(model)
    assert len(ds) == 4 and all(v.shape == (4,) for v in ds.values())
    rows, mat = heatmap_matrix(ds)
    assert rows[0] == "L0.query" and mat.shape == (4, 4) and np.all(mat >= 0)
    lora = build_method("lora", r=2, target_modules=["query"]).apply(tiny_bert())
    assert learned_singular_values(lora) == {} and len(orthonormality_drift(lora)) == 2


def test_callback_in_a_run_and_reload(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from kasa.assets import cache_dir

    monkeypatch.setenv("KASA_CACHE", str(cache_dir()))
    monkeypatch.setenv("HOME", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"model.name_or_path={tiny_bert_dir}", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
            "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=4", "analysis.spectra=true",
            "logger=wandb"])
    run(cfg, run_dir=tmp_path / "run")
    sdir = tmp_path / "run" / "spectra"
    recs = load_spectra(sdir)
    assert [r["epoch"] for r in recs] == [-1, 0, 1]
    assert {p.name for p in sdir.glob("*.npz")} == {"init.npz", "epoch_000.npz", "epoch_001.npz"}
    npz = np.load(sdir / "epoch_001.npz")
    assert len(npz.files) == 4 and recs[-1]["dsigma"][npz.files[0]] == pytest.approx(npz[npz.files[0]].tolist())
    assert recs[0]["dsigma"] != recs[-1]["dsigma"]  # dsigma trained
    model, _ = load_run_model(tmp_path / "run")  # the trained adapter comes back exactly
    for n, v in learned_singular_values(model).items():
        np.testing.assert_allclose(v, recs[-1]["dsigma"][n], rtol=1e-6)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["analysis"]["spectra"] is True
