"""Half-precision bases: adapter parameters are float32 (HF PEFT's ``autocast_adapter_dtype=True``).

On a bfloat16 base a bfloat16 ``dsigma`` cannot take AdamW's steps (an update of lr = 2e-4 is below half the
spacing of bfloat16 numbers near 1, 2^-8), so KaSA's singular values would not learn. Every method's own
parameters are float32 on such a base; ``autocast_adapter_dtype=False`` keeps the base dtype.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import TINY_MODELS, tiny_inputs
from test_matrix import KWARGS, NOT_MERGEABLE, apply
from torch import nn

import kasa.methods
from kasa.methods import AdapterLayer, build_method

WRAPPING = sorted(n for n, cls in kasa.methods.REGISTRY.items() if cls.wraps_targets)
# bfloat16 has 8 significant bits: outputs of a 2-block model agree to a few of its ulps
BF16_TOL = dict(atol=3e-2, rtol=3e-2)


@functools.cache
def _bf16_llama() -> nn.Module:
    torch.manual_seed(0)
    return TINY_MODELS["llama"]().to(torch.bfloat16)


def bf16_llama() -> nn.Module:
    return copy.deepcopy(_bf16_llama())


def adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters owned by the adapter layers (not their wrapped base layers)."""
    out = {}
    for lname, layer in model.named_modules():
        if isinstance(layer, AdapterLayer):
            for pname, p in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    out[f"{lname}.{pname}"] = p
    return out


def _logits(model: nn.Module, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


@pytest.mark.parametrize("name", WRAPPING)
def test_adapter_parameters_are_float32_on_a_bf16_base(name):
    model = bf16_llama()
    method = apply(name, model)
    params = adapter_params(model)
    assert params, name
    assert {str(p.dtype) for p in params.values()} == {"torch.float32"}, name
    # the base stays half precision (SVD residuals are written back into the bfloat16 weights)
    wrapped_bases = [m.base_layer for m in method.adapter_layers(model)]
    assert all(p.dtype == torch.bfloat16 for b in wrapped_bases for p in b.parameters())
    model.eval()
    out = _logits(model, tiny_inputs())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # the regulariser and a backward pass run on the mixed model
    loss = model(**tiny_inputs()).logits.float().pow(2).mean() + method.regularization_loss(model)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params.values() if p.requires_grad)


@pytest.mark.parametrize("name", WRAPPING)
def test_keep_base_dtype_switch(name):
    model = bf16_llama()
    method = build_method(name, autocast_adapter_dtype=False, **KWARGS.get(name, {}))
    if getattr(method, "needs_calibration", False):
        method.apply(model, calibration=[tiny_inputs(seed=7)])
    else:
        method.apply(model)
    assert {p.dtype for p in adapter_params(model).values()} == {torch.bfloat16}
    assert torch.isfinite(_logits(model.eval(), tiny_inputs())).all()


def test_float32_base_is_unchanged():
    torch.manual_seed(0)
    model = TINY_MODELS["llama"]()
    build_method("kasa", r=2).apply(model)
    assert {p.dtype for p in adapter_params(model).values()} == {torch.float32}


def _adamw_steps(model: nn.Module, method, steps: int, lr: float = 2e-4) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)  # no decay: only learning moves a parameter
    model.train()
    for step in range(steps):
        loss = model(**tiny_inputs(seed=step), labels=tiny_inputs(seed=step)["input_ids"]).loss
        (loss + method.regularization_loss(model)).backward()
        opt.step()
        opt.zero_grad()


def _dsigmas(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().clone() for n, p in model.named_parameters() if n.endswith("lora_diag")])


def test_every_kasa_singular_value_learns_on_a_bf16_base():
    model = bf16_llama()
    method = build_method("kasa")  # r = 8 on q, k, v, up, down of both blocks: 80 singular values
    method.apply(model)
    before = _dsigmas(model)
    # dU starts at zero, so dsigma's gradient is zero in step 1; from step 2 on AdamW moves every entry by ~lr
    _adamw_steps(model, method, steps=4)
    after = _dsigmas(model)
    assert before.numel() == 80
    assert (after != before).all(), f"{int((after == before).sum())} of {before.numel()} dsigma entries unchanged"


def test_bf16_singular_values_mostly_stand_still():
    """The failure the float32 default fixes: bfloat16 dsigma entries of size ~1 ignore lr = 2e-4 steps."""
    model = bf16_llama()
    method = build_method("kasa", autocast_adapter_dtype=False)
    method.apply(model)
    before = _dsigmas(model)
    _adamw_steps(model, method, steps=4)
    moved = (_dsigmas(model) != before).float().mean().item()
    assert moved < 0.5, moved  # only entries with |dsigma| < 2^-4 (about 5% of N(0, 1)) can move at all


def _randomise(method, model: nn.Module) -> None:
    """Move every adapter parameter off its init (B = 0 makes many deltas vanish)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter_params(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


@pytest.mark.parametrize("name", sorted(set(WRAPPING) - set(NOT_MERGEABLE)))
def test_merge_into_a_bf16_weight_matches_the_unmerged_forward(name):
    model = bf16_llama().eval()
    method = apply(name, model)
    _randomise(method, model)
    x = tiny_inputs()
    unmerged = _logits(model, x).float()
    weights = {n: m.base_layer.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
    method.merge(model)
    assert all(m.base_layer.weight.dtype == torch.bfloat16 for m in method.adapter_layers(model))
    torch.testing.assert_close(_logits(model, x).float(), unmerged, **BF16_TOL)
    method.unmerge(model)
    torch.testing.assert_close(_logits(model, x).float(), unmerged, **BF16_TOL)
    for n, m in model.named_modules():
        if isinstance(m, AdapterLayer):  # unmerge restores W up to the two bfloat16 roundings (of W + dW, of W)
            w0 = weights[n].float()
            ulp = (w0.abs().max() + m.delta_weight().abs().max()).item() * 2 ** -8
            torch.testing.assert_close(m.base_layer.weight.float(), w0, atol=ulp, rtol=0)


def test_merge_computes_the_sum_in_float32_and_casts_once():
    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("lin", nn.Linear(16, 16, bias=False))
    base = base.to(torch.bfloat16)
    w = base.lin.weight.detach().float().clone()
    method = build_method("lora", r=2, target_modules=["lin"], modules_to_save=[])
    method.apply(base)
    with torch.no_grad():
        base.lin.lora_B.fill_(1e-3)  # a delta far below bfloat16's resolution of each weight entry...
        base.lin.lora_A.fill_(1.0)
    delta = base.lin.delta_weight()
    method.merge(base)
    # ...is added in float32, then rounded once: exactly round_bf16(W + dW), entry by entry
    assert torch.equal(base.lin.base_layer.weight, (w + delta).to(torch.bfloat16))


def test_kasa_export_lora_on_a_bf16_base():
    torch.manual_seed(0)
    original = bf16_llama().eval()
    model = copy.deepcopy(original)
    method = build_method("kasa", r=2, keep_removed=True)
    method.apply(model)
    _randomise(method, model)
    lora, sd = method.export_lora(model)
    assert all(v.dtype == torch.float32 for k, v in sd.items() if k.endswith(("lora_A", "lora_B")))
    target = copy.deepcopy(original)
    lora.apply(target)
    lora.load_adapter_state_dict(target, sd)
    x = tiny_inputs()
    # exact in float32 on the original weights: W + (-U_t S_t V_t^T + dW); the KaSA model holds the truncated
    # weight rounded to bfloat16, so the two agree to bfloat16 precision
    torch.testing.assert_close(_logits(target, x).float(), _logits(model, x).float(), **BF16_TOL)
    for n, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            t = target.get_submodule(n)
            exported = t.base_layer.weight.float() + t.delta_weight()
            kasa_w = m.base_layer.weight.float() + m.delta_weight()
            torch.testing.assert_close(exported, kasa_w, atol=kasa_w.abs().max().item() * 2 ** -8, rtol=0)


@pytest.mark.parametrize("name", ["bitfit", "fft"])
def test_base_parameter_methods_warn_on_a_half_base(name):
    torch.manual_seed(0)
    model = TINY_MODELS["bert"]().to(torch.bfloat16)
    with pytest.warns(UserWarning, match="bfloat16 parameters in that dtype"):
        build_method(name).apply(model)
    assert any(p.requires_grad and p.dtype == torch.bfloat16 for p in model.parameters())


def test_lightning_fit_on_a_bf16_llama_trains_float32_adapters(tiny_causal_dir, tmp_path, commonsense_data):
    """The real loop (kasa.recipe.run: AdamW param groups, 32-true precision) on a model loaded in bfloat16."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from kasa.config import CONF_DIR
    from kasa.recipe import run

    class Watch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.before = _dsigmas(pl_module.model)
            self.opt_dtypes = {p.dtype for g in trainer.optimizers[0].param_groups for p in g["params"]}

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[
            "benchmark=commonsense", f"model.name_or_path={tiny_causal_dir}", "model.dtype=bfloat16", "method=kasa",
            "method.r=4", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false",
            "dataset.max_eval=2", "benchmark.batch_size=4", "benchmark.eval_batch_size=4",
            "benchmark.generation.max_new_tokens=4", *commonsense_data])
    watch = Watch()
    res = run(cfg, run_dir=tmp_path / "run", callbacks=[watch])
    assert watch.opt_dtypes == {torch.float32}
    sd = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    diag = torch.cat([v for k, v in sorted(sd.items()) if k.endswith("lora_diag")])
    assert diag.dtype == torch.float32 and diag.numel() == watch.before.numel()
    assert (diag != watch.before).all()  # every singular value moved in 4 steps
    assert res["history"] and all(torch.isfinite(torch.tensor(v)) for v in res["history"][-1].values()
                                  if isinstance(v, float))


def test_true_half_precision_trainer_is_refused_with_float32_adapters():
    from hydra import compose, initialize_config_dir

    from kasa.config import CONF_DIR
    from kasa.config.validate import validate
    from kasa.errors import ConfigError

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        bad = compose("train", overrides=["trainer.precision=bf16-true"])
        ok = compose("train", overrides=["trainer.precision=bf16-true", "method.autocast_adapter_dtype=false"])
    with pytest.raises(ConfigError, match="trainer.precision=bf16-true casts the float32 adapter"):
        validate(bad)
    validate(ok)


@pytest.mark.parametrize("name", ["pissa", "milora", "corda"])
def test_residual_inits_keep_float32_factors_and_a_bf16_residual(name):
    model = bf16_llama().eval()
    x = tiny_inputs()
    base_out = _logits(model, x).float()
    original = {n: m.weight.detach().float().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    apply(name, model)
    for n, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            # the trainable factors start as the float32 initial factors, not as their bfloat16 roundings
            assert torch.equal(m.lora_A, m.residual_init_A) and torch.equal(m.lora_B, m.residual_init_B)
            # residual = round_bf16(W - s B0 A0): W is recovered to one bfloat16 rounding of the residual
            w = m.base_layer.weight
            assert w.dtype == torch.bfloat16
            ulp = w.float().abs().max().item() * 2 ** -8
            torch.testing.assert_close(w.float() + m.removed_part(), original[n], atol=ulp, rtol=0)
    torch.testing.assert_close(_logits(model, x).float(), base_out, **BF16_TOL)  # unchanged at init
