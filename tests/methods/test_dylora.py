"""DyLoRA: a training forward at sampled rank b is exactly a rank-b LoRA with the truncated factors."""

from __future__ import annotations

import pytest
import torch
from _baseline_checks import fresh, perturb_adapters
from conftest import model_output, tiny_inputs

from kasa.methods import MethodError, build_method
from kasa.methods.dylora import DyLoraLayer
from kasa.methods.lora import LoraLayer

R, ALPHA = 6, 12.0


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _truncated_lora(model, b: int, use_rslora: bool = False):
    """A plain LoRA of rank b on a fresh base, holding the first b rows/columns of the DyLoRA factors."""
    lora_model = _no_dropout(fresh("bert"))
    lora = build_method("lora", r=b, alpha=ALPHA, use_rslora=use_rslora, target_modules=["query", "value"])
    lora.apply(lora_model)
    dy = {n: m for n, m in model.named_modules() if isinstance(m, DyLoraLayer)}
    with torch.no_grad():
        for n, m in lora_model.named_modules():
            if isinstance(m, LoraLayer):
                m.lora_A.copy_(dy[n].lora_A[:b])
                m.lora_B.copy_(dy[n].lora_B[:, :b])
        lora_model.classifier.load_state_dict(model.classifier.state_dict())
    return lora_model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_sampled_rank_forward_equals_truncated_lora(use_rslora):
    model = _no_dropout(fresh("bert"))
    method = build_method("dylora", r=R, alpha=ALPHA, use_rslora=use_rslora, target_modules=["query", "value"], seed=5)
    method.apply(model)
    perturb_adapters(model, scale=0.5)
    model.train()
    x = tiny_inputs()
    seen = set()
    for step in range(12):
        method.on_before_forward(model, step)
        b = method.sample_rank(step)
        assert all(m.sampled_rank == b for m in model.modules() if isinstance(m, DyLoraLayer))
        seen.add(b)
        ref = _truncated_lora(model, b, use_rslora).train()
        with torch.no_grad():
            diff = (model_output(model, x) - model_output(ref, x)).abs().max().item()
        assert diff < 1e-6, (b, diff)
    assert len(seen) > 1
    # eval mode: the full rank r, i.e. a rank-r LoRA with scaling alpha / r
    model.eval()
    ref = _truncated_lora(model, R, use_rslora).eval()
    with torch.no_grad():
        torch.testing.assert_close(model_output(model, x), model_output(ref, x), rtol=0, atol=1e-6)


def test_rank_draws_reproducible_and_uniform():
    a, b = build_method("dylora", r=4, seed=1), build_method("dylora", r=4, seed=1)
    draws = [a.sample_rank(t) for t in range(400)]
    assert draws == [b.sample_rank(t) for t in range(400)]
    assert draws != [build_method("dylora", r=4, seed=2).sample_rank(t) for t in range(400)]
    counts = torch.bincount(torch.tensor(draws), minlength=5)
    assert counts[0] == 0 and (counts[1:] > 60).all()


def _grad_rows_cols(frozen_lower: bool | None, b: int) -> tuple[list[int], list[int]]:
    """Which rows of A / columns of B get a gradient in a training forward at rank ``b``."""
    kw = {} if frozen_lower is None else {"frozen_lower": frozen_lower}
    model = _no_dropout(fresh("bert"))
    method = build_method("dylora", r=R, alpha=ALPHA, target_modules=["query", "value"], **kw)
    method.apply(model)
    perturb_adapters(model, scale=0.5)
    model.train()
    method.set_rank(model, b)
    model_output(model, tiny_inputs()).sum().backward()
    layer = next(m for m in model.modules() if isinstance(m, DyLoraLayer))
    return ((layer.lora_A.grad.abs().sum(1) > 0).nonzero().view(-1).tolist(),
            (layer.lora_B.grad.abs().sum(0) > 0).nonzero().view(-1).tolist())


def test_lower_ranks_frozen_by_default_as_the_reference_code():
    assert build_method("dylora").config.frozen_lower is True
    assert _grad_rows_cols(None, 3) == ([2], [2])  # default: only the b-th component learns
    assert _grad_rows_cols(False, 3) == ([0, 1, 2], [0, 1, 2])  # the switch: all of the first b


def test_eval_rank_and_frozen_lower():
    model = _no_dropout(fresh("bert"))
    method = build_method("dylora", r=R, alpha=ALPHA, eval_rank=3, frozen_lower=True,
                          target_modules=["query", "value"])
    method.apply(model)
    perturb_adapters(model, scale=0.5)
    x = tiny_inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model_output(model, x), model_output(_truncated_lora(model, 3).eval(), x),
                                   rtol=0, atol=1e-6)
    model.train()
    method.set_rank(model, 4)
    model_output(model, x).sum().backward()
    layer = next(m for m in model.modules() if isinstance(m, DyLoraLayer))
    nonzero_rows = (layer.lora_A.grad.abs().sum(1) > 0).nonzero().view(-1).tolist()
    nonzero_cols = (layer.lora_B.grad.abs().sum(0) > 0).nonzero().view(-1).tolist()
    assert nonzero_rows == [3] and nonzero_cols == [3]  # only the b-th component learns
    with pytest.raises(MethodError):
        build_method("dylora", r=4, eval_rank=5)
