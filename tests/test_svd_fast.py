"""The fast KaSA truncation (float64 Gram path, auto fallback, batching) and the truncation cache.

Accuracy target: the truncated weight ``W - U_t S_t V_t^T`` within 1e-4 relative (Frobenius) of a
float64 full-SVD reference, on matrices with known spectra, every shape, and the tiny models.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_bert, tiny_gpt2, tiny_inputs

from kasa.methods import MethodError, build_method, get_weight
from kasa.methods import kasa as kasa_mod
from kasa.methods import svd as svd_mod
from kasa.methods.kasa import KasaLayer
from kasa.methods.svd import batched_smallest_triplets, gram_smallest_triplets, smallest_triplets

TOL = 1e-4
T = 6
SHAPES = [(64, 64), (96, 48), (48, 96)]  # square, tall, wide


def _with_spectrum(out_f: int, in_f: int, s: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = min(out_f, in_f)
    U, _ = torch.linalg.qr(torch.randn(out_f, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_f, k, generator=g, dtype=torch.float64))
    return ((U * s) @ V.T).float()


def _spectrum(kind: str, k: int) -> torch.Tensor | None:
    d = torch.float64
    top = torch.linspace(10, 1, k - T, dtype=d)
    if kind == "gaussian":
        return None
    if kind == "geometric":  # condition number 1e3
        return torch.logspace(0, -3, k, dtype=d)
    if kind == "near_degenerate_cut":  # 1e-3 relative gap between kept and removed
        return torch.cat([top, torch.full((T,), 1 - 1e-3, dtype=d)])
    if kind == "cluster_in_removed":  # removed triplets nearly equal among themselves
        return torch.cat([top, 0.5 + 1e-9 * torch.arange(T, 0, -1, dtype=d)])
    if kind == "rank_deficient":  # 3 exact zeros among the removed
        return torch.cat([torch.linspace(10, 1, k - 3, dtype=d), torch.zeros(3, dtype=d)])
    if kind == "tiny_tail":  # removed singular values ~1e-9 of s_max
        return torch.cat([top, torch.logspace(-8, -9, T, dtype=d)])
    raise KeyError(kind)


SPECTRA = ["gaussian", "geometric", "near_degenerate_cut", "cluster_in_removed", "rank_deficient", "tiny_tail"]


def _matrix(kind: str, shape: tuple[int, int]) -> torch.Tensor:
    s = _spectrum(kind, min(shape))
    if s is None:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return _with_spectrum(*shape, s)


def _reference_truncated(W: torch.Tensor, t: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    k = S.shape[0]
    return W.double() - (U[:, k - t:] * S[k - t:]) @ Vh[k - t:]


def _rel_err(W: torch.Tensor, U, S, Vh, t: int) -> float:
    ref = _reference_truncated(W, t)
    got = W.double() - (U.double() * S.double()) @ Vh.double()
    return float((got - ref).norm() / ref.norm())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", SPECTRA)
@pytest.mark.parametrize("method", ["gram", "auto"])
def test_truncated_weight_matches_float64_svd(shape, kind, method):
    W = _matrix(kind, shape)
    U, S, Vh = smallest_triplets(W, T, torch.float64, method=method)
    assert U.shape == (shape[0], T) and S.shape == (T,) and Vh.shape == (T, shape[1])
    assert _rel_err(W, U, S, Vh, T) < TOL
    # the factors are a valid piece of an SVD: orthonormal vectors, the true smallest singular values
    eye = torch.eye(T, dtype=torch.float64)
    assert torch.allclose(Vh @ Vh.T, eye, atol=1e-6)
    assert torch.allclose(U.T @ U, eye, atol=1e-6)
    s_ref = torch.linalg.svdvals(W.double())
    assert torch.allclose(S, s_ref[-T:], atol=1e-6 * float(s_ref[0]))
    assert torch.all(S[:-1] >= S[1:])  # descending, as torch.linalg.svd


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_exact_tie_at_the_cut_gives_a_valid_truncation(shape):
    # With a tie the removed subspace is not unique: check what any valid answer must satisfy.
    k = min(shape)
    s = torch.cat([torch.linspace(10, 2, k - T - 2, dtype=torch.float64), torch.ones(T + 2, dtype=torch.float64)])
    W = _with_spectrum(*shape, s)
    for method in ("gram", "auto"):
        U, S, Vh = smallest_triplets(W, T, torch.float64, method=method)
        trunc = W.double() - (U * S) @ Vh
        sv = torch.linalg.svdvals(trunc)
        assert torch.allclose(sv[: k - T], s[: k - T], rtol=1e-5)
        assert float(sv[k - T:].abs().max()) < 1e-5
        assert torch.allclose(S, torch.ones(T, dtype=torch.float64), atol=1e-5)


def test_auto_falls_back_exactly_where_the_gram_path_is_unreliable():
    good = _matrix("gaussian", (64, 64))
    deficient = _matrix("rank_deficient", (64, 64))
    s = torch.cat([torch.linspace(10, 1, 64 - T, dtype=torch.float64), torch.full((T,), 1 - 1e-9, dtype=torch.float64)])
    tied = _with_spectrum(64, 64, s)
    stack = torch.stack([good, deficient, tied])
    *_, used = batched_smallest_triplets(stack, T, torch.float64, "auto")
    assert used == ["gram", "svd", "svd"]
    *_, used = batched_smallest_triplets(stack, T, torch.float64, "gram")
    assert used == ["gram"] * 3
    _, _, _, reports = gram_smallest_triplets(stack, T)
    assert reports[0].accurate and not reports[1].accurate and not reports[2].accurate


def test_batched_equals_one_by_one_and_cuda_style_eigh(monkeypatch):
    ws = torch.stack([_matrix(k, (48, 96)) for k in ("gaussian", "geometric", "near_degenerate_cut")])
    U, S, Vh, _ = batched_smallest_triplets(ws, T, torch.float64, "gram")
    for i in range(ws.shape[0]):
        u, s, vh = smallest_triplets(ws[i], T, torch.float64, "gram")
        torch.testing.assert_close((U[i] * S[i]) @ Vh[i], (u * s) @ vh, atol=1e-10, rtol=0)
    # the torch.linalg.eigh branch (what CUDA runs) agrees with the SciPy subset branch
    monkeypatch.setattr(svd_mod, "_sla", None)
    U2, S2, Vh2, _ = batched_smallest_triplets(ws, T, torch.float64, "gram")
    torch.testing.assert_close((U2 * S2[:, None]) @ Vh2, (U * S[:, None]) @ Vh, atol=1e-10, rtol=0)


def test_svd_mode_is_the_previous_full_svd_bit_for_bit():
    W = _matrix("gaussian", (96, 48))
    U, S, Vh = smallest_triplets(W, T, torch.float32, method="svd")
    U0, S0, Vh0 = torch.linalg.svd(W, full_matrices=False)
    assert torch.equal(U, U0[:, -T:]) and torch.equal(S, S0[-T:]) and torch.equal(Vh, Vh0[-T:])
    for t0 in (smallest_triplets(W, 0, method="gram"), smallest_triplets(W, 0, method="svd")):
        assert [tuple(x.shape) for x in t0] == [(96, 0), (0,), (0, 48)]


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
@pytest.mark.parametrize("truncation", ["paper", "reference"])
def test_tiny_models_fast_path_matches_full_svd(arch, truncation):
    """BERT (Linear), GPT-2 (Conv1D, in x out storage) and Llama through method.apply."""
    base = TINY_MODELS[arch]()
    ref = copy.deepcopy(base)
    targets = {"bert": ["query", "value", "intermediate.dense", "output.dense"], "gpt2": ["c_attn", "c_fc", "c_proj"],
               "llama": ["q_proj", "k_proj", "down_proj", "up_proj"]}[arch]
    fast = build_method("kasa", r=4, target_modules=targets, truncation=truncation, svd_method="auto",
                        keep_removed=True)
    slow = build_method("kasa", r=4, target_modules=targets, truncation=truncation, svd_method="svd",
                        svd_dtype="float64")
    originals = {n: get_weight(m).detach().clone() for n, m in base.named_modules() if
                 any(n.endswith(t) for t in targets)}
    fast.apply(base)
    slow.apply(ref)
    checked = 0
    for n, layer in base.named_modules():
        if isinstance(layer, KasaLayer):
            other = ref.get_submodule(n)
            w, w_ref = get_weight(layer.base_layer).double(), get_weight(other.base_layer).double()
            assert float((w - w_ref).norm() / w_ref.norm()) < TOL, n
            assert layer.kasa_removed_us.dtype == torch.float32  # svd_dtype default keeps float32 buffers
            # the stored factors still reproduce the original weight exactly (export / reload contract)
            restored = w + layer.kasa_removed_us.double() @ layer.kasa_removed_vh.double()
            torch.testing.assert_close(restored, originals[n].double(), atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 4


def test_before_wrap_groups_same_shapes_into_one_call(monkeypatch):
    calls = []
    real = kasa_mod.batched_smallest_triplets

    def spy(weights, t, dtype, method):
        calls.append(tuple(weights.shape))
        return real(weights, t, dtype, method)

    monkeypatch.setattr(kasa_mod, "batched_smallest_triplets", spy)
    model = tiny_bert()
    build_method("kasa", r=4, target_modules=["query", "value", "intermediate.dense"]).apply(model)
    # 2 layers x (query, value) share 32x32; 2 intermediate.dense are 48x32
    assert sorted(calls) == [(2, 48, 32), (4, 32, 32)]


def test_bad_svd_method_is_named():
    with pytest.raises(MethodError, match="svd_method='fast'"):
        build_method("kasa", svd_method="fast")


# -- the on-disk cache ---------------------------------------------------------------------------------
def _apply(model, **kw):
    method = build_method("kasa", r=4, target_modules=["query", "value"], **{"keep_removed": True, **kw})
    method.apply(model)
    return method


def test_cache_hit_miss_and_identical_results(tmp_path, monkeypatch):
    monkeypatch.delenv("KASA_TRUNCATION_CACHE", raising=False)
    cache = tmp_path / "trunc"
    torch.manual_seed(0)
    base = tiny_bert()
    cold, warm, plain = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    _apply(plain)
    _apply(cold, truncation_cache=str(cache))
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 4  # 2 layers x query/value

    calls = []
    monkeypatch.setattr(kasa_mod, "batched_smallest_triplets", lambda *a, **k: calls.append(a) or 1 / 0)
    _apply(warm, truncation_cache=str(cache))  # every target hits: no decomposition at all
    assert calls == []
    for n, layer in cold.named_modules():
        if isinstance(layer, KasaLayer):
            w = warm.get_submodule(n)
            assert torch.equal(layer.kasa_removed_us, w.kasa_removed_us)
            assert torch.equal(layer.kasa_removed_vh, w.kasa_removed_vh)
            assert torch.equal(layer.base_layer.weight, w.base_layer.weight)
            assert torch.equal(layer.base_layer.weight, plain.get_submodule(n).base_layer.weight)
    x = tiny_inputs()
    torch.testing.assert_close(model_output(cold, x), model_output(warm, x), atol=0, rtol=0)


def test_cache_misses_on_modified_weight_and_other_settings(tmp_path, monkeypatch):
    cache = tmp_path / "trunc"
    monkeypatch.setenv("KASA_TRUNCATION_CACHE", str(cache))  # env var honoured when the field is unset
    base = tiny_bert()
    _apply(copy.deepcopy(base))
    assert len(list(cache.glob("*.pt"))) == 4

    modified = copy.deepcopy(base)
    with torch.no_grad():
        modified.bert.encoder.layer[1].attention.self.query.weight[3, 5] += 1e-3
    _apply(modified)
    assert len(list(cache.glob("*.pt"))) == 5  # only the modified weight missed

    _apply(copy.deepcopy(base), truncation_rank=2)  # another truncation rank: new entries
    _apply(copy.deepcopy(base), svd_method="svd")  # another method: new entries
    assert len(list(cache.glob("*.pt"))) == 13


def test_corrupt_cache_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.delenv("KASA_TRUNCATION_CACHE", raising=False)
    cache = tmp_path / "c"
    base = tiny_gpt2()
    a = copy.deepcopy(base)
    _apply_gpt2 = lambda m: build_method("kasa", r=4, truncation_cache=str(cache)).apply(m)  # noqa: E731
    _apply_gpt2(a)
    for f in cache.glob("*.pt"):
        f.write_bytes(b"not a torch file")
    b = copy.deepcopy(base)
    _apply_gpt2(b)
    x = tiny_inputs()
    torch.testing.assert_close(model_output(a, x), model_output(b, x), atol=0, rtol=0)


def test_syevr_failure_falls_back_to_full_eigh(monkeypatch):
    def boom(*a, **k):
        raise svd_mod._sla.LinAlgError("no convergence")

    W = _matrix("geometric", (48, 96))
    expected = smallest_triplets(W, T, torch.float64, "gram")
    monkeypatch.setattr(svd_mod._sla, "eigh", boom)
    U, S, Vh = smallest_triplets(W, T, torch.float64, "gram")
    torch.testing.assert_close((U * S) @ Vh, (expected[0] * expected[1]) @ expected[2], atol=1e-10, rtol=0)
