"""One matrix over every registered method x the three tiny model shapes (BERT, GPT-2 Conv1D, Llama).

Each case: apply; forward finite; three AdamW steps on ``(logits**2).mean() + regularization_loss`` with the
loop hooks called where the Lightning loop calls them; frozen parameters bit-identical, adapter parameters
moved; merge == unmerged output (or a clear :class:`MethodError`, safe or not, for the non-mergeable adapters);
adapter state dict (no base weight in it) through ``torch.save``/``torch.load`` into a fresh model reproduces
the outputs. The per-method test files keep only what is specific to a method (HF PEFT parity, schedules, ...).

The method list is read from the registry, so a newly registered method joins the matrix automatically;
it then needs an entry in :data:`KWARGS` only when its defaults do not fit the tiny models. The facts a method
declares on its class (``paper_order``, ``export_formats``, ``peft_type``) are checked here too.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_inputs
from torch import nn

import kasa.methods
from kasa.methods import REGISTRY, AdapterLayer, MethodError, PeftMethod, build_method, match_target
from kasa.methods import export as methods_export
from kasa.methods.registry import discover, methods_in_paper_order

MODELS = ("bert", "gpt2", "llama")
METHODS = sorted(kasa.methods.REGISTRY)
STEPS = 3  # LoRA-style B = 0 inits move A only from the second step on
TOL = 1e-5

# Hyper-parameters that keep the tiny models (hidden 32, k/v 16 on Llama, 2 blocks) valid and the run short;
# everything not named here is the method's default.
KWARGS: dict[str, dict[str, Any]] = {
    "adalora": dict(init_r=4, target_r=2, total_steps=STEPS),
    "adapter_h": dict(bottleneck=4),
    "adapter_p": dict(bottleneck=4),
    "adapter_l": dict(bottleneck=4),
    "adapter_d": dict(bottleneck=4, drop_layers=1),  # default drops 5 blocks: the tiny models have 2
    "corda": dict(r=4),
    "dora": dict(r=4),
    "dylora": dict(r=4),
    "kasa": dict(r=2),
    "lora": dict(r=4),
    "milora": dict(r=4),
    "pissa": dict(r=4),
    "sara": dict(threshold=0.3, max_rank=4),
    "vera": dict(r=4),  # the paper's r=1024 would dwarf a 32-wide model
}
# Non-mergeable methods: merge must raise MethodError with this message.
NOT_MERGEABLE = {name: "not mergeable" for name in ("adapter_h", "adapter_p", "adapter_l", "adapter_d")}
# (method, model) pairs where apply itself must fail, with the message it must give.
EXPECTED_ERRORS: dict[tuple[str, str], str] = {
    ("bitfit", "llama"): "bitfit needs bias terms",  # Llama has no biases at all
}


@functools.cache
def _base_model(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    return TINY_MODELS[model_name]()


def fresh(model_name: str) -> nn.Module:
    """A copy of one cached tiny model per shape (identical weights every time, built once)."""
    return copy.deepcopy(_base_model(model_name))


def apply(method_name: str, model: nn.Module):
    """Build the method and apply it; CorDA calibrates on a tiny batch first."""
    method = build_method(method_name, **KWARGS.get(method_name, {}))
    if method.needs_calibration:
        method.apply(model, calibration=[tiny_inputs(seed=7)])
    else:
        method.apply(model)
    return method


def head_param_ids(method, model: nn.Module) -> set[int]:
    heads = method.heads(model)
    return {id(p) for n, m in model.named_modules() if n and match_target(n, heads) for p in m.parameters()}


@torch.no_grad()
def outputs(model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model_output(model, x)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method_name", METHODS)
def test_method_matrix(method_name: str, model_name: str, tmp_path) -> None:
    model = fresh(model_name)
    expected = EXPECTED_ERRORS.get((method_name, model_name))
    if expected is not None:
        with pytest.raises(MethodError, match=expected):
            apply(method_name, model)
        return
    method = apply(method_name, model)
    x = tiny_inputs()

    # -- forward finite --------------------------------------------------------------------------
    assert torch.isfinite(outputs(model, x)).all()
    reg = method.regularization_loss(model)
    assert isinstance(reg, torch.Tensor) and reg.dim() == 0 and torch.isfinite(reg)

    # -- training: only trainable parameters move ------------------------------------------------
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    heads = head_param_ids(method, model)
    body = {n for n in trainable if id(params[n]) not in heads}  # adapter (or body) parameters, not the task head
    assert body, f"{method_name} trains nothing but the task head"
    before = {n: p.detach().clone() for n, p in params.items()}
    # weight_decay=0: a parameter moves only if the loss reaches it (AdamW decays even zero-gradient ones).
    opt = torch.optim.AdamW([params[n] for n in sorted(trainable)], lr=1e-2, weight_decay=0.0)
    reached: set[str] = set()
    model.train()  # DyLoRA samples a rank and dropout is active only in training mode
    for step in range(STEPS):
        method.on_before_forward(model, step)
        loss = (model_output(model, tiny_inputs(seed=10 + step)) ** 2).mean() + method.regularization_loss(model)
        assert torch.isfinite(loss)
        loss.backward()
        reached |= {n for n in trainable if params[n].grad is not None}
        opt.step()
        # As the Lightning loop: after the optimiser step, gradients still there (AdaLoRA scores them).
        method.on_train_step(model, step + 1, STEPS)
        opt.zero_grad()
    frozen_moved = [n for n, p in params.items() if n not in trainable and not torch.equal(p, before[n])]
    assert not frozen_moved, f"frozen parameters changed: {frozen_moved[:5]}"
    assert reached == trainable, f"trainable parameters the loss never reaches: {sorted(trainable - reached)[:5]}"
    # Every trainable parameter learns, the task head included (LoRA-style A moves from step 2 on).
    unmoved = sorted(n for n in trainable if torch.equal(params[n], before[n]))
    assert not unmoved, f"{method_name} parameters unchanged after {STEPS} steps: {unmoved[:5]}"

    # -- merge --------------------------------------------------------------------------------
    out = outputs(model, x)
    assert torch.isfinite(out).all()
    if method_name in NOT_MERGEABLE:
        with pytest.raises(MethodError, match=NOT_MERGEABLE[method_name]):
            method.merge(model)
        with pytest.raises(MethodError, match=NOT_MERGEABLE[method_name]):
            method.merge(model, safe=True)
        torch.testing.assert_close(outputs(model, x), out, rtol=0, atol=0)
    else:
        method.merge(model)
        torch.testing.assert_close(outputs(model, x), out, rtol=0, atol=TOL)
        method.unmerge(model)
        torch.testing.assert_close(outputs(model, x), out, rtol=0, atol=TOL)

    # -- adapter save / load round trip ------------------------------------------------------------
    path = tmp_path / "adapter.pt"
    sd = method.adapter_state_dict(model)
    assert sd and not [k for k in sd if ".base_layer." in k], "the adapter state dict holds frozen base weights"
    torch.save(sd, path)
    sd = torch.load(path, weights_only=True)  # plain tensors only: loadable without trusting pickles
    other = fresh(model_name)
    method2 = apply(method_name, other)
    method2.load_adapter_state_dict(other, sd)
    torch.testing.assert_close(outputs(other, x), out, rtol=0, atol=TOL)


def test_matrix_covers_the_registry() -> None:
    # Table entries for methods that no longer exist would silently test nothing.
    assert set(KWARGS) <= set(METHODS)
    assert set(NOT_MERGEABLE) <= set(METHODS)
    assert {m for m, _ in EXPECTED_ERRORS} <= set(METHODS)
    assert len(METHODS) >= 16


@pytest.mark.parametrize("name", ["kasa", "lora", "pissa", "dora", "vera"])
def test_merge_and_unload_gives_the_plain_architecture(name):
    torch.manual_seed(0)
    base = TINY_MODELS["llama"]()
    model = copy.deepcopy(base)
    method = build_method(name, **{"kasa": {"r": 2}, "vera": {"r": 4}}.get(name, {"r": 4}))
    method.apply(model)
    with torch.no_grad():
        for layer in method.adapter_layers(model):
            for pname, p in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    p.add_(0.05)
    x = tiny_inputs()
    with torch.no_grad():
        expected = model_output(model, x)
        method.merge_and_unload(model)
        got = model_output(model, x)
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert [type(m) for m in model.modules()] == [type(m) for m in base.modules()]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(kasa.methods.REGISTRY))
def test_apply_keeps_the_models_train_or_eval_mode(name):
    """Wrappers are new modules (training mode by default): an eval model must stay deterministic."""
    if name == "bitfit":
        pytest.skip("bitfit wraps nothing")
    model = TINY_MODELS["bert"]()  # eval mode
    kwargs = {"vera": {"r": 4}, "adalora": {"init_r": 4, "target_r": 2, "total_steps": 3},
              "sara": {"threshold": 0.3, "max_rank": 4}}.get(name, {})
    if name.startswith("adapter_"):
        kwargs = {"bottleneck": 4, **({"drop_layers": 1} if name == "adapter_d" else {})}
    method = build_method(name, **kwargs)
    if name == "corda":
        method.apply(model, calibration=[tiny_inputs(seed=7)])
    else:
        method.apply(model)
    assert not any(m.training for m in model.modules())


# -- facts declared on the method classes -------------------------------------------------------------
PAPER_ORDER = ("fft bitfit adapter_h adapter_p adapter_l adapter_d lora adalora dylora vera sara pissa milora dora "
               "corda kasa")


def test_discovery_finds_every_method() -> None:
    assert set(REGISTRY) == set(PAPER_ORDER.split())
    discover()  # idempotent: modules already imported register nothing twice
    assert len(REGISTRY) == 16


def test_paper_order_is_declared_and_unique() -> None:
    orders = {name: cls.paper_order for name, cls in REGISTRY.items()}
    assert all(isinstance(o, int) for o in orders.values()), orders
    assert len(set(orders.values())) == len(orders), orders
    assert methods_in_paper_order() == PAPER_ORDER.split()


@pytest.mark.parametrize("name", METHODS)
def test_export_facts_agree_with_methods_export(name: str) -> None:
    cls = REGISTRY[name]
    assert isinstance(cls.export_formats, tuple) and set(cls.export_formats) <= set(methods_export.FORMAT_NAMES)
    assert methods_export.FORMATS[name] == methods_export.formats(name) == cls.export_formats
    # peft_type: PEFT has the same adapter, so its folder exports (format peft) and imports (init_from)
    assert (cls.peft_type is not None) == (name in methods_export.PEFT_NAMES)
    if cls.peft_type is not None:
        assert "peft" in cls.export_formats and methods_export.IMPORTABLE[name] == cls.peft_type
    for fmt in methods_export.FORMAT_NAMES:
        if fmt in cls.export_formats and not (name == "kasa" and fmt == "peft"):
            methods_export.check_format(name, fmt)
        elif fmt not in cls.export_formats:
            with pytest.raises(MethodError, match=f"{name}"):
                methods_export.check_format(name, fmt)


def test_a_method_without_declarations_gets_the_defaults(monkeypatch) -> None:
    class Undeclared(PeftMethod):
        name = "undeclared"

    monkeypatch.setitem(REGISTRY, "undeclared", Undeclared)
    assert Undeclared.export_formats == () and Undeclared.peft_type is None and not Undeclared.needs_calibration
    assert "undeclared" not in methods_export.IMPORTABLE and methods_export.FORMATS["undeclared"] == ()
    with pytest.raises(MethodError, match="undeclared has no export format: its class Undeclared declares none"):
        methods_export.check_format("undeclared", "merged")
    assert methods_in_paper_order()[-1] == "undeclared"  # undeclared order sorts last
    with pytest.raises(MethodError, match="only the methods PEFT shares"):
        Undeclared(kasa.methods.MethodConfig(init_from="/nowhere"))


def test_count_only_is_state_of_the_method() -> None:
    a, b = build_method("corda", r=4), build_method("corda", r=4)
    with a.counting_only():
        assert a.count_only and not b.count_only
        with pytest.raises(MethodError, match="calibration"):  # b is applied for real: it needs its data
            b.apply(fresh("bert"))
        a.apply(fresh("bert"))  # counting: zero factors of the right shapes, no calibration
    assert not a.count_only


@pytest.mark.parametrize("autocast, dtype", [(True, torch.float32), (False, torch.bfloat16)])
def test_adapter_dtype_follows_the_method_config(autocast: bool, dtype: torch.dtype) -> None:
    model = fresh("llama").to(torch.bfloat16)
    build_method("lora", r=4, autocast_adapter_dtype=autocast).apply(model)
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    assert layers and {m.lora_A.dtype for m in layers} == {dtype}
    # another method built at the same time keeps its own policy: nothing global
    other = fresh("llama").to(torch.bfloat16)
    build_method("lora", r=4, autocast_adapter_dtype=not autocast).apply(other)
    assert {m.lora_A.dtype for m in other.modules() if isinstance(m, AdapterLayer)} != {dtype}
