"""Bottleneck adapters (Houlsby, Pfeiffer, Lin, AdapterDrop) on the tiny BERT / GPT-2 / Llama models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_inputs, train_steps

from kasa.methods import MethodError, build_method
from kasa.methods.adapters import BlockAdapterLayer, BottleneckAdapterLayer, OutputBlockAdapterLayer, layer_index

VARIANTS = ["adapter_h", "adapter_p", "adapter_l", "adapter_d"]
# Tiny models have 2 blocks: AdapterDrop drops block 0 so that something is left to test.
KW = {"adapter_d": {"drop_layers": 1}}


def _adapted(model_name: str, variant: str, **kw):
    torch.manual_seed(0)
    model = TINY_MODELS[model_name]()
    base = copy.deepcopy(model)
    method = build_method(variant, **{**KW.get(variant, {}), **kw})
    method.apply(model)
    return base, model, method


def _adapter_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, BottleneckAdapterLayer)]


def _randomise(layer: BottleneckAdapterLayer) -> None:
    """Non-zero adapter weights, so the branch visibly acts (the up-projection starts at zero)."""
    with torch.no_grad():
        for lin in (layer.adapter_down, layer.adapter_up):
            lin.weight.normal_()


def _block_in_out(model, layers: dict[str, BlockAdapterLayer]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (block output H, adapted output)}`` of each block adapter in one forward of ``model``
    (adapter weights randomised first)."""
    seen: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    for n, layer in layers.items():
        _randomise(layer)
        handles.append(layer.base_layer.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(("block", n), o)))
        handles.append(layer.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(("adapted", n), o)))
    with torch.no_grad():
        model_output(model, tiny_inputs())
    for h in handles:
        h.remove()
    first = (lambda o: o[0] if isinstance(o, tuple) else o)  # noqa: E731 (blocks may return tuples)
    return {n: (first(seen[("block", n)]), first(seen[("adapted", n)])) for n in layers}


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init_and_finite(tiny_model_name, variant):
    base, model, _ = _adapted(tiny_model_name, variant, init_scale=None)  # zero up-projection
    x = tiny_inputs()
    with torch.no_grad():
        out = model_output(model, x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, model_output(base, x), rtol=0, atol=0)


def test_houlsby_default_init_is_adapter_berts_near_identity():
    """adapter-bert: both projections ~ truncated normal(0, 1e-3) cut at 2 std, zero biases."""
    torch.manual_seed(0)
    base, model, method = _adapted("bert", "adapter_h", bottleneck=64)
    assert method.config.init_scale == 1e-3
    layers = [m for m in model.modules() if isinstance(m, BottleneckAdapterLayer)]
    w = torch.cat([lin.weight.flatten() for m in layers for lin in (m.adapter_down, m.adapter_up)])
    assert w.abs().max() <= 2e-3 and 0.7e-3 < w.std() < 1e-3  # truncation at 2 std shrinks the std to 0.88e-3
    assert all(not lin.bias.any() for m in layers for lin in (m.adapter_down, m.adapter_up))
    x = tiny_inputs()
    with torch.no_grad():
        out, ref = model_output(model, x), model_output(base, x)
    assert 0 < (out - ref).abs().max() < 1e-3  # near, not exactly, the identity
    with pytest.raises(MethodError, match="init_scale"):
        build_method("adapter_h", init_scale=0.0)


def test_placement_counts(tiny_model_name):
    n_blocks = 2
    _, h, _ = _adapted(tiny_model_name, "adapter_h")
    _, p, _ = _adapted(tiny_model_name, "adapter_p")
    _, lin, _ = _adapted(tiny_model_name, "adapter_l")
    _, d, _ = _adapted(tiny_model_name, "adapter_d")
    for names, per_block in ((_adapter_names(h), 2), (_adapter_names(p), 1), (_adapter_names(lin), 1)):
        assert len(names) == per_block * n_blocks
        for i in range(n_blocks):
            assert sum(layer_index(n) == i for n in names) == per_block
    h_names = _adapter_names(h)
    assert sum(n.endswith(("attention.output.dense", "attn.c_proj", "self_attn.o_proj")) for n in h_names) == n_blocks
    # Pfeiffer (AdapterHub's arrangement): BERT's post-LN output block, the whole block on GPT-2 / Llama
    assert all(n.endswith(("layer.0.output", "layer.1.output", "h.0", "h.1", "layers.0", "layers.1"))
               for n in _adapter_names(p))
    # Lin et al.'s adapter has its own LayerNorm; the others do not.
    assert all(m.adapter_norm is not None for m in lin.modules() if isinstance(m, BottleneckAdapterLayer))
    assert all(m.adapter_norm is None for m in p.modules() if isinstance(m, BottleneckAdapterLayer))
    # AdapterDrop: nothing in the dropped (lowest) block.
    d_names = _adapter_names(d)
    assert d_names and all(layer_index(n) >= 1 for n in d_names)


def test_adapter_drop_houlsby_style_and_errors():
    _, d, _ = _adapted("bert", "adapter_d", style="houlsby", drop_layers=1)
    assert len(_adapter_names(d)) == 2 and all(layer_index(n) == 1 for n in _adapter_names(d))
    with pytest.raises(MethodError, match="drop_layers=2"):
        _adapted("bert", "adapter_d", drop_layers=2)
    with pytest.raises(MethodError, match="style"):
        build_method("adapter_d", style="nope")
    with pytest.raises(MethodError, match="activation"):
        build_method("adapter_h", activation="nope")


def test_layer_index_parsing():
    assert layer_index("roberta.encoder.layer.11.output.dense") == 11
    assert layer_index("transformer.h.3.mlp.c_proj") == 3
    assert layer_index("model.layers.27.mlp.down_proj") == 27
    assert layer_index("classifier.dense") is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_trainable_move(variant):
    _, model, method = _adapted("bert", variant)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("adapter_up" in n for n in trainable) and not any("base_layer" in n for n in trainable)
    train_steps(model, [0, 1])
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        if n not in trainable:
            assert not moved, n
    assert any(not torch.equal(before[n], dict(model.named_parameters())[n]) for n in trainable if "adapter_up" in n)


def test_houlsby_trains_layer_norms_others_do_not():
    _, h, _ = _adapted("bert", "adapter_h")
    _, p, _ = _adapted("bert", "adapter_p")
    assert dict(h.named_parameters())["bert.encoder.layer.0.output.LayerNorm.weight"].requires_grad
    # Pfeiffer wraps the output block: its LayerNorm sits under base_layer and stays frozen
    assert not dict(p.named_parameters())["bert.encoder.layer.0.output.base_layer.LayerNorm.weight"].requires_grad
    _, p_ln, _ = _adapted("bert", "adapter_p", train_layer_norm=True)  # ... unless asked: it is the model's own
    assert dict(p_ln.named_parameters())["bert.encoder.layer.0.output.base_layer.LayerNorm.weight"].requires_grad


def test_bottleneck_and_reduction_factor():
    _, p, _ = _adapted("bert", "adapter_p", reduction_factor=4)  # hidden 32 / 4
    assert {m.bottleneck for m in p.modules() if isinstance(m, BottleneckAdapterLayer)} == {8}
    _, h, method = _adapted("bert", "adapter_h", bottleneck=5, train_layer_norm=False)
    # paper convention: per adapter 2*d*b + b + d
    assert method.trainable_parameter_count(h) == 4 * (2 * 32 * 5 + 5 + 32)


def test_explicit_target_modules_override_the_preset():
    _, model, _ = _adapted("bert", "adapter_p", target_modules=["query"])
    assert _adapter_names(model) == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]
    with pytest.raises(MethodError, match="match no module"):
        _adapted("bert", "adapter_p", target_modules=["nothing_here"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_dropout_moves_into_the_adapter(tiny_model_name, variant):
    """adapter-bert / AdapterHub order: Adapter(dropout(Project(h))), with the block's own dropout module."""
    torch.manual_seed(0)
    model = TINY_MODELS[tiny_model_name]()
    drops = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    build_method(variant, **KW.get(variant, {}), bottleneck=4).apply(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BottleneckAdapterLayer)}
    for n, layer in layers.items():
        parent = n.rpartition(".")[0]
        if tiny_model_name == "llama" or isinstance(layer, (OutputBlockAdapterLayer, BlockAdapterLayer)):
            # Llama: no dropout module after o_proj / down_proj; blocks apply their own dropout in place
            assert layer.block_dropout is None
            continue
        attr = "resid_dropout" if (tiny_model_name == "gpt2" and n.endswith("attn.c_proj")) else "dropout"
        assert layer.block_dropout is drops[f"{parent}.{attr}"]  # the model's own module, moved
        assert isinstance(model.get_submodule(f"{parent}.{attr}"), torch.nn.Identity)
    layers = {n: m for n, m in layers.items() if not isinstance(m, (OutputBlockAdapterLayer, BlockAdapterLayer))}
    if not layers:
        return
    # training mode: the branch sees exactly the dropped projection output
    n, layer = next(iter(layers.items()))
    layer.train()
    _randomise(layer)
    x = torch.randn(2, 3, layer.in_features)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    h = layer.block_dropout(layer.base_layer(x)) if layer.block_dropout is not None else layer.base_layer(x)
    torch.testing.assert_close(out, h + layer.adapter(h))
    if layer.block_dropout is not None and layer.block_dropout.p > 0:
        assert (h == 0).any()  # dropout did drop something, so the check above is not trivial


@pytest.mark.parametrize("variant", ["adapter_p", "adapter_d"])
def test_pfeiffer_on_post_ln_blocks_is_adapterhubs_arrangement(variant):
    """AdapterHub's PfeifferConfig (original_ln_before/after, residual_before_ln) on BERT's output blocks:
    h = dropout(dense(x)); out = LN(h + up(relu(down(LN(h + r)))) + r)."""
    _, model, _ = _adapted("bert", variant, bottleneck=4)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BottleneckAdapterLayer)}
    first = 1 if variant == "adapter_d" else 0  # AdapterDrop (drop_layers=1 here) keeps Pfeiffer's arrangement
    assert sorted(layers) == [f"bert.encoder.layer.{i}.output" for i in range(first, 2)]
    assert all(isinstance(m, OutputBlockAdapterLayer) for m in layers.values())
    layer = layers["bert.encoder.layer.1.output"]
    assert layer.weight is layer.base_layer.dense.weight and layer.bottleneck == 4
    layer.train()
    _randomise(layer)
    x, r = torch.randn(2, 3, layer.in_features), torch.randn(2, 3, layer.out_features)
    torch.manual_seed(1)
    out = layer(x, r)
    torch.manual_seed(1)
    b = layer.base_layer
    h = b.dropout(b.dense(x))
    assert b.dropout.p > 0 and (h == 0).any()  # training-time dropout did act
    torch.testing.assert_close(out, b.LayerNorm(h + layer.adapter(b.LayerNorm(h + r)) + r))
    layer.disabled = True  # without the adapter: the block itself
    torch.manual_seed(1)
    torch.testing.assert_close(layer(x, r), b.LayerNorm(h + r))
    # original_ln=false: the bottleneck on the dropped FFN projection output, as the other variants
    _, plain, _ = _adapted("bert", variant, bottleneck=4, original_ln=False)
    assert all(n.endswith("output.dense") for n in _adapter_names(plain))


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_adapter_l_sits_on_each_block_output(arch):
    """Lin et al.: Adapter(H) = ReLU(LN(H) W_E) W_D + H on the output H of every transformer block."""
    torch.manual_seed(0)
    _, model, _ = _adapted(arch, "adapter_l", bottleneck=4)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BlockAdapterLayer)}
    assert len(layers) == 2 and sorted(layer_index(n) for n in layers) == [0, 1]
    assert all(n.rsplit(".", 1)[-1].isdigit() for n in layers)  # the blocks themselves
    with torch.no_grad():
        for n, (h, out) in _block_in_out(model, layers).items():
            layer = layers[n]
            expected = h + layer.adapter_up(torch.relu(layer.adapter_down(layer.adapter_norm(h))))
            torch.testing.assert_close(out, expected)
            assert not torch.allclose(out, h)
    if arch != "bert":  # cached generation passes through the wrapped blocks
        out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 7)
    _, ffn, _ = _adapted(arch, "adapter_l", bottleneck=4, placement="ffn")  # the FFN-output placement
    assert all(n.endswith(("output.dense", "mlp.c_proj", "mlp.down_proj")) for n in _adapter_names(ffn))
    with pytest.raises(MethodError, match="placement"):
        build_method("adapter_l", placement="nope")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_pfeiffer_on_pre_ln_blocks_is_adapterhubs_arrangement(arch):
    """AdapterHub on GPT-2 (layer_norm None): H + up(relu(down(H))) with H = residual + FFN, the block's output."""
    torch.manual_seed(0)
    _, model, _ = _adapted(arch, "adapter_p", bottleneck=4)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BottleneckAdapterLayer)}
    assert len(layers) == 2 and all(isinstance(m, BlockAdapterLayer) and m.adapter_norm is None
                                    for m in layers.values())
    with torch.no_grad():
        for n, (h, out) in _block_in_out(model, layers).items():
            layer = layers[n]
            torch.testing.assert_close(out, h + layer.adapter_up(torch.relu(layer.adapter_down(h))))
    _, plain, _ = _adapted(arch, "adapter_p", bottleneck=4, original_ln=False)
    assert all(n.endswith(("mlp.c_proj", "mlp.down_proj")) for n in _adapter_names(plain))


def _four_block_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
                     num_labels=3, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def test_adapter_drop_random_form_skips_a_random_number_of_lowest_blocks_per_step():
    model = _four_block_bert()
    reference = copy.deepcopy(model)
    method = build_method("adapter_d", drop_mode="random", bottleneck=4, seed=3)
    method.apply(model)
    layers = {m.block_index: m for m in model.modules() if isinstance(m, BottleneckAdapterLayer)}
    assert sorted(layers) == [0, 1, 2, 3]  # random form: adapters in every block (what is trained and counted)
    for layer in layers.values():
        _randomise(layer)
    # n ~ U{0..blocks-2}: AdapterHub's notebook draws randint(0, 11) (0..10) for 12 layers; reproducible per step
    assert method.largest_drop(model) == 2
    draws = [method.sample_drop(t, 2) for t in range(300)]
    assert draws == [build_method("adapter_d", drop_mode="random", seed=3).sample_drop(t, 2) for t in range(300)]
    assert (torch.bincount(torch.tensor(draws), minlength=3) > 70).all()
    x = tiny_inputs()
    model.train()
    for step in range(12):
        method.on_before_forward(model, step)
        n = method.sample_drop(step, 2)
        assert [layers[i].skipped() for i in range(4)] == [i < n for i in range(4)]
        # the step's output is the model whose n lowest adapters are switched off
        with torch.no_grad():
            got = model_output(model, x)
            for i in range(4):
                layers[i].train_skip, layers[i].disabled = False, i < n
            want = model_output(model, x)
            for i in range(4):
                layers[i].train_skip, layers[i].disabled = i < n, False
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a skipped adapter gets no gradient in its step
    step = next(t for t in range(100) if method.sample_drop(t, 2) == 2)
    method.on_before_forward(model, step)
    model_output(model, x).sum().backward()
    assert [layers[i].adapter_up.weight.grad is None for i in range(4)] == [True, True, False, False]
    # outside training no adapter is skipped, whatever the last step drew
    model.eval()
    assert not any(m.skipped() for m in layers.values())
    with torch.no_grad():
        assert not torch.allclose(model_output(model, x), model_output(reference, x))


def test_adapter_drop_random_form_eval_drop_and_errors():
    model = _four_block_bert()
    method = build_method("adapter_d", drop_mode="random", bottleneck=4, eval_drop_layers=1, max_drop=3)
    method.apply(model.eval())
    assert method.largest_drop(model) == 3
    skipped = {m.block_index: m.skipped() for m in model.modules() if isinstance(m, BottleneckAdapterLayer)}
    assert skipped == {0: True, 1: False, 2: False, 3: False}
    with pytest.raises(MethodError, match="max_drop=4 would drop every adapter"):
        build_method("adapter_d", drop_mode="random", bottleneck=4, max_drop=4).apply(_four_block_bert())
    with pytest.raises(MethodError, match="drop_mode='sometimes'"):
        build_method("adapter_d", drop_mode="sometimes")
    with pytest.raises(MethodError, match="eval_drop_layers=-1"):
        build_method("adapter_d", eval_drop_layers=-1)
    # the static form (the default) is unchanged: no adapters at all in the lowest drop_layers blocks
    static = build_method("adapter_d", bottleneck=4, drop_layers=2)
    m2 = _four_block_bert()
    static.apply(m2)
    assert sorted(m.block_index for m in m2.modules() if isinstance(m, BottleneckAdapterLayer)) == [2, 3]
