"""KaSA ``truncation=activation_aware``: the t smallest triplets of W diag(rms(x)) removed, exact against a float64
reference, calibrated through the CorDA path, cached by the calibration's fingerprint, reloadable and exportable."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import model_output, tiny_bert, tiny_inputs

from kasa.methods import MethodError, build_method, get_weight
from kasa.methods.kasa import KasaLayer, activation_aware_triplets, input_rms

TARGETS = ["query", "value"]


def _designed(out_f: int, in_f: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W and s with W diag(s) of a known, well separated spectrum; s spans four decades (a few huge channels)."""
    rng = np.random.default_rng(seed)
    k = min(out_f, in_f)
    U, _ = np.linalg.qr(rng.standard_normal((out_f, k)))
    V, _ = np.linalg.qr(rng.standard_normal((in_f, k)))
    sv = np.geomspace(10.0, 0.01, k)
    s = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), in_f))
    return (U * sv) @ V.T / s, s, sv


def _reference_world(w: np.ndarray, s: np.ndarray, t: int) -> np.ndarray:
    """float64: W - U_t S_t V_t^T diag(s)^-1 for W diag(s) = U S V^T."""
    U, S, Vt = np.linalg.svd(w * s, full_matrices=False)
    k = S.size
    return w - (U[:, k - t:] * S[k - t:]) @ Vt[k - t:] / s


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
@pytest.mark.parametrize("svd_method", ["auto", "svd"])
def test_decomposition_matches_a_float64_reference(shape, svd_method):
    w, s, sv = _designed(*shape)
    t = 5
    us, vh = activation_aware_triplets(torch.from_numpy(w)[None], torch.from_numpy(s)[None], t, svd_method)
    world = w - (us[0] @ vh[0]).numpy()
    ref = _reference_world(w, s, t)
    assert np.abs(world - ref).max() < 1e-9 * np.abs(w).max()
    # W_world diag(s) is W diag(s) without its t smallest singular values (Eckart-Young on the scaled weight)
    got = np.linalg.svd(world * s, compute_uv=False)
    np.testing.assert_allclose(got[:-t], sv[:-t], rtol=1e-9)
    assert got[-t:].max() < 1e-9 * sv[0]
    assert np.linalg.matrix_rank(w - world, tol=1e-9 * np.abs(w).max()) == t  # the removed part is rank t


def test_costs_less_scaled_energy_than_the_papers_truncation():
    w, s, _ = _designed(30, 30, seed=1)
    t = 6
    ref = _reference_world(w, s, t)
    U, S, Vt = np.linalg.svd(w, full_matrices=False)
    paper = w - (U[:, -t:] * S[-t:]) @ Vt[-t:]
    # both remove rank t; the activation-aware cut is the smallest in ||(W - W_world) diag(s)||_F
    assert np.linalg.norm((w - ref) * s) < 0.5 * np.linalg.norm((w - paper) * s)


@pytest.mark.parametrize("shape", [(20, 16), (16, 20)])
def test_zero_rms_channels_are_guarded(shape):
    rng = np.random.default_rng(2)
    w, s = rng.standard_normal(shape), np.exp(rng.uniform(np.log(1e-2), np.log(1e2), shape[1]))
    s[[3, 11]] = 0.0  # channels the calibration never activated
    us, vh = activation_aware_triplets(torch.from_numpy(w)[None], torch.from_numpy(s)[None], 4)
    part = (us[0] @ vh[0]).numpy()
    assert np.isfinite(part).all()
    assert np.linalg.matrix_rank(part, tol=1e-9 * np.abs(w).max()) == 4
    world = w - part
    live = np.setdiff1d(np.arange(shape[1]), [3, 11])
    k = min(shape) - 4
    # the live channels: W_world diag(s) is the best rank k - t approximation of W diag(s) there
    U, S, _ = np.linalg.svd(world[:, live] * s[live], full_matrices=False)
    np.testing.assert_allclose(S[:k], np.linalg.svd(w[:, live] * s[live], compute_uv=False)[:k], rtol=1e-8)
    assert S[k:].max() < 1e-9 * S[0]
    # a dead channel keeps its column's part in the kept left singular directions (the limit s_j -> 0)
    np.testing.assert_allclose(world[:, [3, 11]], U[:, :k] @ U[:, :k].T @ w[:, [3, 11]], rtol=0, atol=1e-7)
    with pytest.raises(MethodError, match="zero RMS"):
        activation_aware_triplets(torch.from_numpy(w)[None], torch.zeros(1, 20, dtype=torch.float64), 4)


def _inputs_float64(model, names, batches):
    """Each target layer's inputs over ``batches``, unpadded positions only (an independent collector)."""
    got = {n: [] for n in names}
    mask = [None]
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: got[n].append(i[0].detach().double()[mask[0].bool()])) for n in names]
    with torch.no_grad():
        for b in batches:
            mask[0] = b["attention_mask"]
            model(**b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in got.items()}


def _padded(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    ids = torch.cat([batch["input_ids"], torch.zeros(batch["input_ids"].shape[0], extra, dtype=torch.long)], 1)
    mask = torch.cat([batch["attention_mask"], torch.zeros_like(ids[:, -extra:])], 1)
    return {"input_ids": ids, "attention_mask": mask}


def test_method_truncates_every_target_as_the_reference():
    torch.manual_seed(0)
    base = tiny_bert()
    batches = [tiny_inputs(seed=3, batch=4, seq=9), _padded(tiny_inputs(seed=4, batch=3, seq=6), 3)]
    names = [n for n, _ in base.named_modules() if n.endswith(("query", "value"))]
    xs = _inputs_float64(base, names, batches)
    method = build_method("kasa", r=3, alpha=6, target_modules=TARGETS, truncation="activation_aware")
    assert method.needs_calibration and not build_method("kasa", r=3).needs_calibration
    model = method.apply(copy.deepcopy(base), calibration=batches)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, KasaLayer)}
    assert sorted(layers) == sorted(names)
    for n, layer in layers.items():
        s = xs[n].pow(2).mean(0).sqrt()
        torch.testing.assert_close(layer.kasa_input_scale.double(), s, rtol=1e-6, atol=0)
        w = get_weight(base.get_submodule(n)).detach().double().numpy()
        ref = _reference_world(w, layer.kasa_input_scale.double().numpy(), 3)
        np.testing.assert_allclose(get_weight(layer.base_layer).detach().double().numpy(), ref, rtol=0,
                                   atol=2e-6 * np.abs(w).max())
        assert layer.removed_rank == 3


def test_padding_does_not_change_the_statistics():
    torch.manual_seed(0)
    model = tiny_bert()
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    plain = tiny_inputs(seed=5, batch=3, seq=8)
    a = input_rms(model, names, [plain])
    b = input_rms(model, names, [_padded(plain, 5)])
    for n in names:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=0)
    # max_samples counts sequences: the second batch is never read
    c = input_rms(model, names, [plain, tiny_inputs(seed=6, batch=3, seq=8)], max_samples=3)
    for n in names:
        torch.testing.assert_close(a[n], c[n], rtol=0, atol=0)


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, KasaLayer):
                for p in (m.lora_A, m.lora_B, m.lora_diag):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_reload_without_calibration_data_and_exact_export():
    torch.manual_seed(0)
    base = tiny_bert()
    calib = [tiny_inputs(seed=8, batch=4, seq=9)]
    x = tiny_inputs()
    kw = dict(r=3, alpha=6, target_modules=TARGETS, truncation="activation_aware")
    with pytest.raises(MethodError, match="needs calibration data"):
        build_method("kasa", **kw).apply(copy.deepcopy(base))
    method = build_method("kasa", keep_removed=True, **kw)
    model = method.apply(copy.deepcopy(base), calibration=calib)
    _randomise(model)
    want = model_output(model, x)
    sd = method.adapter_state_dict(model)
    assert sum(k.endswith(".kasa_input_scale") for k in sd) == 4
    # a fresh base: the saved statistics re-derive the same truncation, no calibration data needed
    for keep in (True, False):
        again = build_method("kasa", keep_removed=keep, **kw).apply(copy.deepcopy(base), adapter_state_dict=sd)
        torch.testing.assert_close(model_output(again, x), want, atol=1e-5, rtol=0)
    # exact plain LoRA on the ORIGINAL weights: the removed part is still rank t
    lora, lsd = method.export_lora(model)
    plain = lora.apply(copy.deepcopy(base))
    lora.load_adapter_state_dict(plain, lsd)
    torch.testing.assert_close(model_output(plain, x), want, atol=1e-5, rtol=0)
    # an adapter trained on another calibration's truncation is refused, not silently mixed
    lean = build_method("kasa", **kw)
    other = lean.apply(copy.deepcopy(base), calibration=[tiny_inputs(seed=9, batch=4, seq=9)])
    with pytest.raises(MethodError, match="other calibration statistics"):
        lean.load_adapter_state_dict(other, {k: v for k, v in sd.items() if "kasa_removed" not in k})


def test_cache_keys_on_the_calibration(tmp_path):
    torch.manual_seed(0)
    base = tiny_bert()
    kw = dict(r=3, target_modules=TARGETS, truncation="activation_aware", truncation_cache=str(tmp_path))
    a, b = [tiny_inputs(seed=10, batch=4, seq=9)], [tiny_inputs(seed=11, batch=4, seq=9)]
    x = tiny_inputs()
    first = build_method("kasa", **kw).apply(copy.deepcopy(base), calibration=a)
    assert len(list(tmp_path.glob("*.pt"))) == 4
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    hit = build_method("kasa", **kw).apply(copy.deepcopy(base), calibration=a)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == stamps  # read, not rewritten
    torch.testing.assert_close(model_output(hit, x), model_output(first, x), atol=1e-6, rtol=0)
    other = build_method("kasa", **kw).apply(copy.deepcopy(base), calibration=b)
    assert len(list(tmp_path.glob("*.pt"))) == 8  # other statistics: other entries
    assert not torch.allclose(model_output(other, x), model_output(first, x), atol=1e-6)
    build_method("kasa", **{**kw, "truncation": "paper"}).apply(copy.deepcopy(base))
    assert len(list(tmp_path.glob("*.pt"))) == 12  # and never the paper truncation's


@pytest.mark.parametrize("kwargs, message", [
    (dict(truncation="activation"), "truncation='activation' is unknown"),
    (dict(calibration_samples=0), "calibration_samples=0"),
])
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(MethodError, match=message):
        build_method("kasa", **kwargs)


def test_kasa_train_calibrates_resumes_and_reloads(tiny_bert_dir, tmp_path):
    """``kasa-train method.truncation=activation_aware``: calibrated on the training batches, an interrupted run
    resumes (its recalibration matches the checkpoint's statistics), and the analysis reload needs no data."""
    from conftest import Crash, crash_at_epoch

    from kasa.analysis.spectra import load_spectra, update_spectra, weight_spectra
    from kasa.analysis.tiny import tiny_config
    from kasa.recipe import run
    from kasa.runs.load import load_run

    over = ("method.r=2", "method.truncation=activation_aware", "method.calibration_samples=16",
            "trainer.max_epochs=2", "trainer.limit_train_batches=2", "analysis.spectra=true")
    cfg = tiny_config(*over, model_dir=tiny_bert_dir)
    with pytest.raises(Crash):
        run(cfg, run_dir=tmp_path / "run", callbacks=[crash_at_epoch(1)])
    res = run(tiny_config(*over, "resume=last", model_dir=tiny_bert_dir), run_dir=tmp_path / "run")
    assert res["resumed_from"] and res["config"]["method"]["truncation"] == "activation_aware"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert sum(k.endswith(".kasa_input_scale") for k in ckpt["state_dict"]) == 4
    model = load_run(tmp_path / "run", "last", keep_removed=True).model
    from transformers import AutoModelForSequenceClassification

    orig = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    last = load_spectra(tmp_path / "run" / "spectra")[-1]
    for n, sp in weight_spectra(model).items():  # W rebuilt exactly from the re-derived removed part
        want = torch.linalg.svdvals(get_weight(orig.get_submodule(n)).detach().double()).numpy()
        np.testing.assert_allclose(sp["W"], want, rtol=1e-5, atol=1e-6)
    for n, v in update_spectra(model).items():
        np.testing.assert_allclose(v, last["update"][n], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_architecture_is_truncated_in_its_scaled_coordinates(arch):
    from conftest import TINY_MODELS

    torch.manual_seed(0)
    base = TINY_MODELS[arch]()
    method = build_method("kasa", r=3, truncation="activation_aware")  # the architecture's preset targets
    model = method.apply(copy.deepcopy(base), calibration=[tiny_inputs(seed=12, batch=3, seq=8)])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, KasaLayer)}
    assert layers
    for n, layer in layers.items():
        w = get_weight(base.get_submodule(n)).detach().double().numpy()  # (out, in), Conv1D transposed
        s = layer.kasa_input_scale.double().numpy()
        assert s.shape == (w.shape[1],) and (s > 0).all()
        world = get_weight(layer.base_layer).detach().double().numpy()
        np.testing.assert_allclose(world, _reference_world(w, s, 3), rtol=0, atol=2e-6 * np.abs(w).max())


def test_calibration_leaves_the_adapter_init_of_the_seed():
    """Iterating a DataLoader draws from the global RNG; the adapter must still start from the seed's draw."""
    from torch.utils.data import DataLoader

    base = tiny_bert()
    x = tiny_inputs(seed=13, batch=6, seq=8)
    rows = [{k: v[i] for k, v in x.items()} for i in range(6)]
    loader = DataLoader(rows, batch_size=3, shuffle=True)
    inits = {}
    for tr in ("paper", "activation_aware"):
        torch.manual_seed(0)
        m = build_method("kasa", r=3, target_modules=TARGETS, truncation=tr)
        model = m.apply(copy.deepcopy(base), calibration=loader if m.needs_calibration else None)
        inits[tr] = {n: (layer.lora_A.detach().clone(), layer.lora_diag.detach().clone())
                     for n, layer in model.named_modules() if isinstance(layer, KasaLayer)}
    for n, (a, d) in inits["paper"].items():
        torch.testing.assert_close(inits["activation_aware"][n][0], a, rtol=0, atol=0)
        torch.testing.assert_close(inits["activation_aware"][n][1], d, rtol=0, atol=0)
