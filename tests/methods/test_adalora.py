"""AdaLoRA: shapes, forward, orthogonal regulariser and rank allocation against HF PEFT's AdaLoRA."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _baseline_checks import fresh
from conftest import tiny_inputs

from kasa.methods import MethodError, build_method
from kasa.methods.adalora import AdaLoraLayer

KW = dict(init_r=6, target_r=3, alpha=8.0, tinit=2, tfinal=3, deltaT=1, orth_reg_weight=0.5)
TOTAL = 10


def _peft_pair(model_name: str, targets: list[str]):
    from peft import AdaLoraConfig, get_peft_model

    base = fresh(model_name)
    ours_model = copy.deepcopy(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = AdaLoraConfig(init_r=KW["init_r"], target_r=KW["target_r"], lora_alpha=int(KW["alpha"]),
                            tinit=KW["tinit"], tfinal=KW["tfinal"], deltaT=KW["deltaT"],
                            orth_reg_weight=KW["orth_reg_weight"], total_step=TOTAL, target_modules=targets,
                            beta1=0.85, beta2=0.85)
        peft_model = get_peft_model(base, cfg)
    method = build_method("adalora", target_modules=targets, modules_to_save=[], **KW)
    method.apply(ours_model)
    layers = {n: m for n, m in ours_model.named_modules() if isinstance(m, AdaLoraLayer)}
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules()
                   if hasattr(m, "lora_E") and "default" in getattr(m, "lora_E", {})}
    assert sorted(layers) == sorted(peft_layers)
    with torch.no_grad():  # same starting point (the two libraries draw random numbers in another order)
        g = torch.Generator().manual_seed(3)
        for n, m in layers.items():
            pm = peft_layers[n]
            for pname in ("lora_A", "lora_B", "lora_E"):
                assert getattr(m, pname).shape == pm.__getattr__(pname)["default"].shape
            pm.lora_E["default"].copy_(torch.randn(m.lora_E.shape, generator=g))
            for pname in ("lora_A", "lora_B", "lora_E"):
                getattr(m, pname).copy_(pm.__getattr__(pname)["default"])
    return peft_model, ours_model, method, layers, peft_layers


@pytest.mark.parametrize("model_name,targets", [("bert", ["query", "value"]), ("gpt2", ["c_attn"])])
def test_forward_and_regulariser_match_peft(model_name, targets):
    peft_model, ours, method, _, _ = _peft_pair(model_name, targets)
    x = tiny_inputs()
    labels = x["input_ids"] if model_name == "gpt2" else torch.tensor([0, 2])
    with torch.no_grad():
        out_peft = peft_model.base_model(**x, labels=labels)
        out_ours = ours(**x, labels=labels)
        diff = (out_peft.logits - out_ours.logits).abs().max().item()
        assert diff < 1e-6, diff
        peft_model.peft_config["default"].orth_reg_weight = 0.0
        task_only = peft_model.base_model(**x, labels=labels).loss
        reg_peft = out_peft.loss - task_only
        reg_ours = method.regularization_loss(ours)
    assert reg_peft.item() > 0
    torch.testing.assert_close(reg_ours, reg_peft, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_ours.loss + reg_ours, out_peft.loss, rtol=1e-5, atol=1e-6)


def test_rank_allocation_matches_peft():
    targets = ["query", "value", "key"]
    peft_model, ours, method, layers, peft_layers = _peft_pair("bert", targets)
    peft_model.train(), ours.train()
    for m in list(peft_model.modules()) + list(ours.modules()):  # determinism: no dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    p_params = [p for p in peft_model.parameters() if p.requires_grad]
    o_params = [p for p in ours.parameters() if p.requires_grad]
    assert sum(p.numel() for p in p_params) == sum(p.numel() for p in o_params)
    opt_p = torch.optim.SGD(p_params, lr=0.5)
    opt_o = torch.optim.SGD(o_params, lr=0.5)
    seen_masks = set()
    for step in range(1, TOTAL + 3):
        x = tiny_inputs(seed=step, batch=4)
        labels = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(step))
        loss_p = peft_model.base_model(**x, labels=labels).loss
        loss_o = ours(**x, labels=labels).loss + method.regularization_loss(ours)
        torch.testing.assert_close(loss_o, loss_p, rtol=1e-5, atol=1e-6)
        loss_p.backward()
        loss_o.backward()
        opt_p.step()
        opt_o.step()
        peft_model.base_model.update_and_allocate(step)
        method.on_train_step(ours, step, TOTAL)
        opt_p.zero_grad()
        opt_o.zero_grad()
        pattern = peft_model.peft_config["default"].rank_pattern
        for n, m in layers.items():
            pm = peft_layers[n]
            for pname in ("lora_A", "lora_B", "lora_E"):
                torch.testing.assert_close(getattr(m, pname), pm.__getattr__(pname)["default"], rtol=1e-4, atol=1e-5)
            zero_p = (pm.lora_E["default"].view(-1) == 0)
            assert torch.equal(m.lora_E.view(-1) == 0, zero_p), (step, n)
            if pattern:
                key = next(k for k in pattern if k.startswith(f"{n}.lora_E"))
                assert m.lora_mask.tolist() == list(pattern[key]), (step, n)
        seen_masks.add(tuple(sum(m.lora_mask.tolist()) for m in layers.values()))
    # the budget went from init_r * n to target_r * n
    assert sum(m.rank for m in layers.values()) == KW["target_r"] * len(layers)
    assert len(seen_masks) > 2
    # the rank pattern travels with the adapter (the lora_mask buffers)
    sd = method.adapter_state_dict(ours)
    other = fresh("bert")
    method2 = build_method("adalora", target_modules=targets, modules_to_save=[], **KW)
    method2.apply(other)
    method2.load_adapter_state_dict(other, sd)
    assert method2.ranks(other) == method.ranks(ours)
    ours.eval(), other.eval()
    with torch.no_grad():
        x = tiny_inputs()
        torch.testing.assert_close(ours(**x).logits, other(**x).logits, rtol=0, atol=1e-6)


def test_total_steps_required_and_schedule_checked():
    model = fresh("bert")
    method = build_method("adalora", **KW)
    method.apply(model)
    with pytest.raises(MethodError, match="total number of training steps"):
        method.on_train_step(model, 1, None)
    with pytest.raises(MethodError, match="no budgeting phase"):
        method.on_train_step(model, 1, 4)
    with pytest.raises(MethodError, match="no budgeting phase"):
        build_method("adalora", tinit=5, tfinal=5, total_steps=10)


def test_budget_schedule_is_cubic():
    method = build_method("adalora", tinit=10, tfinal=20, total_steps=100)
    init_bgt, target_bgt = 120, 80
    assert method.budget_schedule(10, 100, init_bgt, target_bgt) == (120, False)
    assert method.budget_schedule(50, 100, init_bgt, target_bgt)[0] == int(40 * (1 - 40 / 70) ** 3 + 80)
    assert method.budget_schedule(81, 100, init_bgt, target_bgt) == (80, True)


def test_final_parameter_count_is_the_final_budget():
    model = fresh("llama")  # q_proj 32x32 and k_proj 16x32: a triplet costs 65 or 49 parameters
    method = build_method("adalora", init_r=6, target_r=2, target_modules=["q_proj", "k_proj"], modules_to_save=[])
    method.apply(model)
    layers = method.layers(model)
    cost = {n: m.in_features + m.out_features + 1 for n, m in layers.items()}
    assert sorted(set(cost.values())) == [49, 65]
    assert method.trainable_parameter_count(model) == 6 * sum(cost.values())  # what trains, at init_r
    assert method.final_parameter_count(model) == 2 * sum(cost.values())  # the final budget papers count
    # once the masks hold the final budget (8 triplets), each layer's own rank counts: all of it on q_proj here
    method.mask_with_pattern(model, {n: [True] * 4 + [False] * 2 if n.endswith("q_proj") else [False] * 6
                                     for n in layers})
    assert method.final_parameter_count(model) == 2 * 4 * 65


def test_schedule_in_fractions_is_the_schedule_in_steps():
    """tinit_frac / tfinal_frac round to the steps of the run's length and then give the same budgets; the export
    writes the resolved steps with the run's T."""
    steps = build_method("adalora", tinit=45, tfinal=150, deltaT=1)
    fracs = build_method("adalora", tinit_frac=0.15, tfinal_frac=0.5, deltaT=1)
    assert fracs.schedule_steps(300) == (45, 150) and fracs.schedule_steps(1000) == (150, 500)
    odd = build_method("adalora", tinit_frac=0.1, tfinal_frac=0.33)
    assert odd.schedule_steps(7) == (1, 2)  # 0.7 and 2.31 round to the nearest step
    assert [fracs.budget_schedule(s, 300, 144, 96) for s in range(1, 301)] == \
        [steps.budget_schedule(s, 300, 144, 96) for s in range(1, 301)]
    assert fracs.peft_schedule() == (150, 500, 1000)  # length unknown: a nominal T PEFT accepts
    model = fresh("bert")
    fracs.apply(model)
    fracs.on_train_step(model, 1, 40)
    assert fracs.peft_schedule() == (6, 20, 40)  # the run's own T, once the loop has given it


@pytest.mark.parametrize("kw, match", [
    (dict(tinit=10, tinit_frac=0.1), "not both"),
    (dict(tfinal=10, tfinal_frac=0.5), "not both"),
    (dict(tinit_frac=1.0), r"\[0, 1\)"),
    (dict(tfinal_frac=-0.1), r"\[0, 1\)"),
    (dict(tinit_frac=0.5, tfinal_frac=0.5), "no budgeting phase"),  # before the run's length is known
    (dict(tinit_frac=0.5, tfinal=50, total_steps=100), "no budgeting phase"),
])
def test_schedule_fractions_checked(kw, match):
    with pytest.raises(MethodError, match=match):
        build_method("adalora", **kw)
