"""KaSA: parity with HF PEFT's KaSA, exact truncation, every switch, merge, export, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_bert, tiny_inputs

from kasa.methods import MethodError, build_method, get_weight
from kasa.methods.kasa import KasaLayer


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero adapter weights, so outputs depend on every factor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, KasaLayer):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.3)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
                if m.lora_diag is not None:
                    m.lora_diag.copy_(torch.randn(m.lora_diag.shape, generator=g))


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, KasaLayer)}


def test_parity_with_hf_peft_kasa():
    from peft import KasaConfig, LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = tiny_bert()
    ours_model, peft_model = copy.deepcopy(base), copy.deepcopy(base)
    peft_model = get_peft_model(peft_model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                       kasa_config=KasaConfig(beta=1e-2, gamma=1e-1)))
    method = build_method("kasa", r=4, alpha=8, target_modules=["query", "value"], beta=1e-2, gamma=1e-1)
    method.apply(ours_model)
    _randomise(ours_model)
    layers = _layers(ours_model)
    assert len(layers) == 4
    for name, ours in layers.items():
        theirs = peft_model.base_model.model.get_submodule(name)
        # same truncated base weight
        torch.testing.assert_close(ours.base_layer.weight, theirs.base_layer.weight, atol=1e-6, rtol=0)
        with torch.no_grad():
            theirs.lora_A["default"].weight.copy_(ours.lora_A)
            theirs.lora_B["default"].weight.copy_(ours.lora_B)
            theirs.lora_diag["default"].copy_(ours.lora_diag)
    x = tiny_inputs()
    torch.testing.assert_close(model_output(ours_model, x), peft_model(**x).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(method.regularization_loss(ours_model),
                               peft_model.base_model._get_kasa_loss(), atol=1e-6, rtol=1e-6)
    ours_count = method.trainable_parameter_count(ours_model)
    theirs_count = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert ours_count == theirs_count


@pytest.mark.parametrize("truncation_rank", [None, 2])
def test_truncation_removes_exactly_the_smallest_triplets(truncation_rank):
    torch.manual_seed(0)
    model = tiny_bert()
    names = [n for n, _ in model.named_modules() if n.endswith(("query", "value"))]
    originals = {n: get_weight(model.get_submodule(n)).detach().double().clone() for n in names}
    r = 4
    t = truncation_rank or r
    build_method("kasa", r=r, target_modules=["query", "value"], truncation_rank=truncation_rank).apply(model)
    for n, layer in _layers(model).items():
        W = originals[n]
        U, S, Vh = torch.linalg.svd(W)
        k = S.numel()
        expected = (U[:, :k - t] * S[:k - t]) @ Vh[:k - t]
        got = get_weight(layer.base_layer).double()
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
        s_new = torch.linalg.svdvals(got)
        torch.testing.assert_close(s_new[:k - t], S[:k - t], atol=2e-6, rtol=0)  # the rest is untouched
        assert s_new[k - t:].abs().max() < 1e-5  # exactly t directions gone
        assert layer.removed_rank == t


def test_reference_truncation_keeps_in_features_minus_r_and_spares_wide_weights():
    torch.manual_seed(0)
    model = TINY_MODELS["llama"]()
    # down_proj is 32 x 48 (wide: in > out); q_proj is 32 x 32
    down = get_weight(model.model.layers[0].mlp.down_proj).detach().clone()
    build_method("kasa", r=4, target_modules=["q_proj", "down_proj"], truncation="reference").apply(model)
    wide = model.model.layers[0].mlp.down_proj
    assert wide.removed_rank == 0  # in - r = 44 >= min(32, 48): nothing truncated
    torch.testing.assert_close(get_weight(wide.base_layer), down)
    square = model.model.layers[0].self_attn.q_proj
    assert square.removed_rank == 4


def test_truncation_none_and_singular_values_off():
    torch.manual_seed(0)
    base = tiny_bert()
    model = copy.deepcopy(base)
    method = build_method("kasa", r=4, target_modules=["query"], truncation="none", singular_values="off")
    method.apply(model)
    for layer in _layers(model).values():
        assert layer.lora_diag is None
        assert layer.removed_rank == 0
    x = tiny_inputs()
    torch.testing.assert_close(model_output(model, x), model_output(base, x))  # B = 0 and no truncation
    # singular values off == plain LoRA on the truncated base
    lora_like = copy.deepcopy(base)
    build_method("kasa", r=4, target_modules=["query"], singular_values="off").apply(lora_like)
    trainable = {n for n, p in lora_like.named_parameters() if p.requires_grad and "lora_" in n}
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable)


def test_reference_regulariser_equals_explicit_large_matrices():
    torch.manual_seed(0)
    model = tiny_bert()
    method = build_method("kasa", r=4, target_modules=["query", "value"], regularizer="reference",
                          beta=0.3, gamma=0.7)
    method.apply(model)
    _randomise(model)
    layers = list(_layers(model).values())
    explicit = 0.0
    for m in layers:
        A, B = m.lora_A.double(), m.lora_B.double()
        l3 = (torch.linalg.norm(A.T @ A - torch.eye(A.shape[1], dtype=A.dtype))
              + torch.linalg.norm(B @ B.T - torch.eye(B.shape[0], dtype=B.dtype)))
        explicit = explicit + 0.3 * m.lora_diag.double().pow(2).sum() + 0.7 * l3
    explicit = explicit / len(layers)
    torch.testing.assert_close(method.regularization_loss(model).double(), explicit, atol=1e-5, rtol=1e-6)


def test_paper_regulariser_is_zero_for_orthonormal_factors_and_zero_diag():
    torch.manual_seed(0)
    model = tiny_bert()
    method = build_method("kasa", r=4, target_modules=["query"], beta=1.0, gamma=1.0)
    method.apply(model)
    with torch.no_grad():
        for m in _layers(model).values():
            m.lora_B.copy_(torch.linalg.qr(torch.randn(m.out_features, 4))[0])
            m.lora_A.copy_(torch.linalg.qr(torch.randn(m.in_features, 4))[0].T)
            m.lora_diag.zero_()
    assert method.regularization_loss(model).item() < 1e-5


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_merge_export_and_reload(arch, tmp_path):
    torch.manual_seed(0)
    base = TINY_MODELS[arch]()
    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj", "down_proj"]}[arch]
    model = copy.deepcopy(base)
    method = build_method("kasa", r=3, alpha=6, target_modules=targets, keep_removed=True)
    method.apply(model)
    _randomise(model)
    x = tiny_inputs()
    expected = model_output(model, x)

    # merge is exact, unmerge restores
    method.merge(model)
    torch.testing.assert_close(model_output(model, x), expected, atol=1e-5, rtol=0)
    method.unmerge(model)
    torch.testing.assert_close(model_output(model, x), expected, atol=1e-5, rtol=0)

    # exact plain-LoRA export on the ORIGINAL base
    lora, sd = method.export_lora(model)
    original = copy.deepcopy(base)
    lora.apply(original)
    lora.load_adapter_state_dict(original, sd)
    torch.testing.assert_close(model_output(original, x), expected, atol=1e-5, rtol=0)

    # save / reload onto a fresh base
    path = tmp_path / "adapter.pt"
    torch.save(method.adapter_state_dict(model), path)
    fresh = copy.deepcopy(base)
    method2 = build_method("kasa", r=3, alpha=6, target_modules=targets, keep_removed=True)
    method2.apply(fresh)
    method2.load_adapter_state_dict(fresh, torch.load(path))
    torch.testing.assert_close(model_output(fresh, x), expected, atol=1e-5, rtol=0)
    # the default (keep_removed=false) re-derives the truncation itself and ignores the saved factors
    lean = copy.deepcopy(base)
    method3 = build_method("kasa", r=3, alpha=6, target_modules=targets)
    method3.apply(lean)
    method3.load_adapter_state_dict(lean, torch.load(path))
    torch.testing.assert_close(model_output(lean, x), expected, atol=1e-5, rtol=0)


def test_reload_re_truncates_when_the_saved_svd_differs():
    torch.manual_seed(0)
    base = tiny_bert()
    src = copy.deepcopy(base)
    m_src = build_method("kasa", r=4, target_modules=["query"], truncation_rank=2, keep_removed=True)
    m_src.apply(src)
    _randomise(src)
    dst = copy.deepcopy(base)
    m_dst = build_method("kasa", r=4, target_modules=["query"], truncation_rank=2, svd_dtype="float64",
                         keep_removed=True)
    m_dst.apply(dst)
    with torch.no_grad():  # perturb the destination's removed part: loading must restore then re-truncate
        for layer in _layers(dst).values():
            layer.replace_removed(layer.kasa_removed_us * 0.5, layer.kasa_removed_vh)
    m_dst.load_adapter_state_dict(dst, m_src.adapter_state_dict(src))
    x = tiny_inputs()
    torch.testing.assert_close(model_output(dst, x), model_output(src, x), atol=1e-5, rtol=0)


def test_disabled_adapter_gives_the_truncated_base():
    torch.manual_seed(0)
    base = tiny_bert()
    model = copy.deepcopy(base)
    method = build_method("kasa", r=4, target_modules=["query", "value"])
    method.apply(model)
    _randomise(model)
    method.set_adapter_enabled(model, False)
    truncated = copy.deepcopy(base)
    for n, layer in _layers(model).items():
        truncated.get_submodule(n).weight.data.copy_(layer.base_layer.weight)
    x = tiny_inputs()
    torch.testing.assert_close(model_output(model, x), model_output(truncated, x))


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 32}, "r=32 is impossible"),
    ({"r": 4, "truncation_rank": 40}, "truncation_rank=40 is impossible"),
    ({"truncation": "half"}, "truncation='half'"),
    ({"regularizer": "l1"}, "regularizer='l1'"),
    ({"svd_dtype": "float16"}, "svd_dtype='float16'"),
    ({"rank": 4}, "no hyper-parameter"),
])
def test_bad_configuration_is_named(kwargs, message):
    with pytest.raises((MethodError, ValueError), match=message):
        build_method("kasa", target_modules=["query"], **kwargs).apply(tiny_bert())


def test_safe_merge_refuses_non_finite_and_changes_nothing():
    model = tiny_bert()
    method = build_method("kasa", r=4, target_modules=["query"])
    method.apply(model)
    layer = next(iter(_layers(model).values()))
    before = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
        layer.lora_A.fill_(1.0)
    with pytest.raises(MethodError, match="non-finite"):
        method.merge(model, safe=True)
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, before)


@pytest.mark.parametrize("name", ["kasa", "lora"])
def test_layer_type_that_cannot_be_wrapped_is_named(name):
    with pytest.raises(MethodError, match="cannot wrap 'bert.embeddings.LayerNorm' of type LayerNorm"):
        build_method(name, r=2, target_modules=["embeddings.LayerNorm"]).apply(tiny_bert())


def test_preset_targets_per_architecture():
    model = tiny_bert()
    method = build_method("kasa", r=2)
    method.apply(model)
    assert sorted({n.rsplit(".", 1)[1] for n in _layers(model)}) == ["query", "value"]
    with pytest.raises(MethodError, match="no preset target modules"):
        build_method("kasa", r=2).apply(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_regularization_terms_are_the_unweighted_sums():
    torch.manual_seed(0)
    model = tiny_bert()
    method = build_method("kasa", r=4, target_modules=["query", "value"], beta=0.5, gamma=0.25)
    method.apply(model)
    _randomise(model)
    layers = list(_layers(model).values())
    terms = method.regularization_terms(model)
    torch.testing.assert_close(terms["l2"], sum(m.l2() for m in layers).detach())
    torch.testing.assert_close(terms["l3"], sum(m.l3_paper() for m in layers).detach())
    torch.testing.assert_close(method.regularization_loss(model).detach(), 0.5 * terms["l2"] + 0.25 * terms["l3"])


def test_keep_removed_false_same_model_less_memory(tmp_path):
    torch.manual_seed(0)
    base = tiny_bert()
    kept, lean = copy.deepcopy(base), copy.deepcopy(base)
    m_kept = build_method("kasa", r=4, target_modules=["query", "value"], keep_removed=True)
    m_lean = build_method("kasa", r=4, target_modules=["query", "value"])  # the default
    m_kept.apply(kept)
    m_lean.apply(lean)
    assert m_lean.config.keep_removed is False
    for n, layer in _layers(lean).items():
        assert layer.kasa_removed_us is None and layer.removed_rank == _layers(kept)[n].removed_rank == 4
        torch.testing.assert_close(layer.base_layer.weight, _layers(kept)[n].base_layer.weight)
        with torch.no_grad():
            for p in ("lora_A", "lora_B", "lora_diag"):
                getattr(layer, p).copy_(getattr(_layers(kept)[n], p))
    _randomise(kept)
    _randomise(lean)
    x = tiny_inputs()
    torch.testing.assert_close(model_output(lean, x), model_output(kept, x))
    sd = m_lean.adapter_state_dict(lean)
    assert not any("kasa_removed" in k for k in sd)
    fresh = copy.deepcopy(base)  # reload: apply re-derives the same truncation
    m2 = build_method("kasa", r=4, target_modules=["query", "value"], keep_removed=False)
    m2.apply(fresh)
    m2.load_adapter_state_dict(fresh, sd)
    torch.testing.assert_close(model_output(fresh, x), model_output(lean, x), atol=1e-6, rtol=0)
    with pytest.raises(MethodError, match="keep_removed=true"):
        m_lean.export_lora(lean)
