"""Spectra analysis: the learned update's spectrum, dsigma's change from its init, W / W_world / W + dW and their
tails, orthonormality drift, heatmaps, and the callback in a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_bert, tiny_cls
from hydra import compose, initialize_config_dir

from kasa.analysis.spectra import (
    SpectraCallback,
    dsigma_change,
    heatmap_matrix,
    learned_singular_values,
    load_spectra,
    orthonormality_drift,
    removed_ranks,
    spectrum_tails,
    update_spectra,
    weight_spectra,
)
from kasa.config import CONF_DIR
from kasa.methods import build_method
from kasa.recipe import run
from kasa.runs.load import load_run


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
    rows, mat = heatmap_matrix(ds, absolute=True)
    assert rows[0] == "L0.query" and mat.shape == (4, 4) and np.all(mat >= 0)
    assert np.any(heatmap_matrix(ds)[1] < 0)  # signed unless asked
    lora = build_method("lora", r=2, target_modules=["query"]).apply(tiny_bert())
    assert learned_singular_values(lora) == {} and len(orthonormality_drift(lora)) == 2


def test_callback_in_a_run_and_reload(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from kasa.assets import cache_dir

    monkeypatch.setenv("KASA_CACHE", str(cache_dir()))
    monkeypatch.setenv("HOME", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            *tiny_cls(tiny_bert_dir), "trainer.max_epochs=2", "trainer.limit_train_batches=3",
            "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=4", "analysis.spectra=true",
            "logger=wandb"])
    run(cfg, run_dir=tmp_path / "run")
    sdir = tmp_path / "run" / "spectra"
    recs = load_spectra(sdir)
    assert [r["epoch"] for r in recs] == [-1, 0, 1]
    assert [r["step"] for r in recs][0] == 0
    init = np.load(sdir / "init.npz")
    change = dsigma_change(recs)
    for n in init.files:  # the change is measured from the draw before the first step
        np.testing.assert_allclose(change[n], np.asarray(recs[-1]["dsigma"][n]) - init[n], rtol=1e-6, atol=1e-7)
    assert all(np.all(np.asarray(recs[0]["update"][n]) == 0) for n in init.files)  # dU = 0 at the init
    assert all(np.asarray(recs[-1]["update"][n]).max() > 0 for n in init.files)
    assert {p.name for p in sdir.glob("*.npz")} == {"init.npz", "epoch_000.npz", "epoch_001.npz"}
    npz = np.load(sdir / "epoch_001.npz")
    assert len(npz.files) == 4 and recs[-1]["dsigma"][npz.files[0]] == pytest.approx(npz[npz.files[0]].tolist())
    assert recs[0]["dsigma"] != recs[-1]["dsigma"]  # dsigma trained
    model = load_run(tmp_path / "run", "last", keep_removed=True).model  # the trained adapter comes back exactly
    for n, v in learned_singular_values(model).items():
        np.testing.assert_allclose(v, recs[-1]["dsigma"][n], rtol=1e-6)
    for n, v in update_spectra(model).items():
        np.testing.assert_allclose(v, recs[-1]["update"][n], rtol=1e-5, atol=1e-8)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["analysis"]["spectra"] is True


@pytest.mark.parametrize("name, kwargs", [("kasa", dict(alpha=6.0)), ("kasa", dict(use_rslora=True)),
                                          ("lora", dict(alpha=3.0)), ("pissa", {})])
def test_update_spectra_are_the_svd_of_the_merged_delta(name, kwargs):
    torch.manual_seed(0)
    method = build_method(name, r=4, target_modules=["query", "value"], **kwargs)
    model = method.apply(tiny_bert())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained-looking adapter: dU, dV not orthonormal, dsigma of mixed signs
        for m in model.modules():
            for p in ("lora_A", "lora_B", "lora_diag"):
                if isinstance(getattr(m, p, None), torch.Tensor):
                    getattr(m, p).add_(torch.randn(getattr(m, p).shape, generator=g) * 0.5)
    got = update_spectra(model)
    before = {n: m.base_layer.weight.detach().double().clone() for n, m in model.named_modules()
              if hasattr(m, "lora_A")}
    method.merge(model)
    for n, w0 in before.items():
        merged_delta = model.get_submodule(n).base_layer.weight.detach().double() - w0
        want = torch.linalg.svdvals(merged_delta).numpy()[:4]
        np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-5 * want[0])
        assert np.all(np.diff(got[n]) <= 0)


def test_dsigma_change_is_current_minus_init(tmp_path):
    torch.manual_seed(0)
    model = build_method("kasa", r=4, target_modules=["query"]).apply(tiny_bert())
    cb = SpectraCallback(tmp_path)
    init = learned_singular_values(model)
    cb.record(model, -1, 0)
    layer = model.get_submodule("bert.encoder.layer.1.attention.self.query")
    with torch.no_grad():
        layer.lora_diag.add_(torch.tensor([0.5, -0.25, 0.0, 1.0]))
    cb.record(model, 0, 7)
    change = dsigma_change(load_spectra(tmp_path))
    np.testing.assert_allclose(change["bert.encoder.layer.1.attention.self.query"], [0.5, -0.25, 0.0, 1.0],
                               atol=1e-6)
    np.testing.assert_allclose(change["bert.encoder.layer.0.attention.self.query"], 0.0, atol=0)
    cb.record(model, -1, 0)  # a rerun of the init replaces the record and keeps the order
    assert [r["epoch"] for r in load_spectra(tmp_path)] == [-1, 0]
    assert set(init) == set(change)
    with pytest.raises(ValueError, match="no initial spectra record"):
        dsigma_change(load_spectra(tmp_path)[1:])


def test_tails_mark_the_removed_triplets():
    model = tiny_bert_seeded()
    name = "bert.encoder.layer.0.attention.self.query"
    s_orig = torch.linalg.svdvals(model.get_submodule(name).weight.detach().double()).numpy()
    build_method("kasa", r=3, target_modules=["query", "value"]).apply(model)
    spec, removed = weight_spectra(model), removed_ranks(model)
    assert set(removed.values()) == {3}
    tails = spectrum_tails(spec, removed)
    tl = tails[name]
    k = len(s_orig)
    assert list(tl["index"]) == list(range(k - 12, k)) and tl["removed"].sum() == 3 and tl["removed"][-3:].all()
    np.testing.assert_allclose(tl["W"], s_orig[-12:], rtol=1e-5)
    assert tl["removed_energy"] == pytest.approx(np.sum(s_orig[-3:] ** 2) / np.sum(s_orig ** 2), rel=1e-3)
    assert len(spectrum_tails(spec, removed, width=5)[name]["index"]) == 5
    lora = build_method("lora", r=2, target_modules=["query"]).apply(tiny_bert_seeded())
    t0 = spectrum_tails(weight_spectra(lora), removed_ranks(lora))
    assert all(not v["removed"].any() and v["removed_energy"] == pytest.approx(0, abs=1e-12) for v in t0.values())


def test_activation_aware_spectra_need_the_factors():
    from conftest import tiny_inputs

    calib = [tiny_inputs(seed=2, batch=4, seq=9)]
    name = "bert.encoder.layer.0.attention.self.query"
    s_orig = torch.linalg.svdvals(tiny_bert_seeded().get_submodule(name).weight.detach().double()).numpy()
    kw = dict(r=3, target_modules=["query"], truncation="activation_aware")
    kept = build_method("kasa", keep_removed=True, **kw).apply(tiny_bert_seeded(), calibration=calib)
    np.testing.assert_allclose(weight_spectra(kept)[name]["W"], s_orig, rtol=1e-5)
    lean = build_method("kasa", **kw).apply(tiny_bert_seeded(), calibration=calib)
    assert np.isnan(weight_spectra(lean)[name]["W"]).all()  # not W's kept values plus W diag(s)'s removed ones
