"""CorDA against HF PEFT 0.21 (``preprocess_corda`` + ``init_lora_weights="corda"``) on the tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, tiny_inputs
from svd_family_helpers import (
    ALPHA,
    TARGETS,
    R,
    check_merge_unmerge,
    fresh_pair,
    max_diff,
    outputs,
    peft_base_weight,
    peft_layers,
    peft_trainable,
    perturb_adapters,
    same_adapters,
)

from kasa.methods import MethodError, build_method, get_weight

TOL = 1e-5
MODELS = ["bert", "gpt2", "llama"]
# PEFT's hook squeezes the batch dimension: one unpadded sequence per batch.
CALIB = [tiny_inputs(seed=100 + i, batch=1, seq=24) for i in range(8)]


def _peft_corda(model, name: str, mode: str):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS[name], init_lora_weights="corda",
                     corda_config=CordaConfig(corda_method=mode))

    def run_model():
        for batch in CALIB:
            model(**batch)

    preprocess_corda(model, cfg, run_model=run_model)
    return get_peft_model(model, cfg)


def _ours(model, name: str, mode: str, calibration=CALIB):
    method = build_method("corda", r=R, alpha=ALPHA, mode=mode, target_modules=TARGETS[name])
    method.apply(model, calibration=calibration)
    return method


@pytest.mark.parametrize("name,mode", [("bert", "kpm"), ("gpt2", "ipm"), ("llama", "kpm"), ("llama", "ipm")])
def test_matches_peft(name, mode):
    a, b = fresh_pair(name)
    orig = copy.deepcopy(a)
    peft_model = _peft_corda(a, name, mode)
    method = _ours(b, name, {"kpm": "kpa", "ipm": "ipa"}[mode])
    for n, theirs, mine in peft_layers(peft_model, b):
        A_p, B_p = theirs.lora_A["default"].weight, theirs.lora_B["default"].weight
        assert max_diff(peft_base_weight(theirs), get_weight(mine.base_layer)) < TOL, n
        assert max_diff(B_p @ A_p, mine.lora_B @ mine.lora_A) < TOL, n
        # residual + adapter is the original weight
        assert max_diff(get_weight(mine.base_layer) + mine.delta_weight(), get_weight(orig.get_submodule(n))) < TOL
    assert method.trainable_parameter_count(b) == peft_trainable(peft_model)
    assert max_diff(outputs(peft_model), outputs(b)) < TOL
    assert max_diff(outputs(orig), outputs(b)) < TOL
    same_adapters(peft_model, b)
    assert max_diff(outputs(peft_model), outputs(b)) < TOL


def test_kpa_and_ipa_split_the_context_spectrum():
    _, a = fresh_pair("bert")
    _, b = fresh_pair("bert")
    _ours(a, "bert", "kpa"), _ours(b, "bert", "ipa")
    n = "bert.encoder.layer.0.attention.self.query"
    dk = a.get_submodule(n).delta_weight()
    di = b.get_submodule(n).delta_weight()
    # IPA takes the largest components of W C, KPA the smallest: the IPA adapter carries more of W
    assert dk.norm() < di.norm()


def test_calibration_is_required_and_padding_is_masked():
    model, _ = fresh_pair("bert")
    with pytest.raises(MethodError, match="calibration"):
        build_method("corda", r=R, target_modules=TARGETS["bert"]).apply(model)
    # a padded sequence calibrates as the same sequence unpadded
    short = tiny_inputs(seed=5, batch=1, seq=10)
    padded = {"input_ids": torch.cat([short["input_ids"], torch.zeros(1, 6, dtype=torch.long)], dim=1),
              "attention_mask": torch.cat([short["attention_mask"], torch.zeros(1, 6, dtype=torch.long)], dim=1)}
    m1 = build_method("corda", r=R, target_modules=TARGETS["bert"])
    m2 = build_method("corda", r=R, target_modules=TARGETS["bert"])
    c1, c2 = m1.calibrate(model, [short]), m2.calibrate(model, [padded])
    assert set(c1) == set(c2) and all(max_diff(c1[k], c2[k]) < TOL for k in c1)
    # batching: a batch of two sequences equals the same two sequences one by one
    two = tiny_inputs(seed=6, batch=2, seq=10)
    c3 = m1.calibrate(model, [two])
    c4 = m2.calibrate(model, [{k: v[i:i + 1] for k, v in two.items()} for i in range(2)])
    assert all(max_diff(c3[k], c4[k]) < TOL for k in c3)
    assert model.training is False


@pytest.mark.parametrize("name", MODELS)
def test_merge_and_round_trip(name):
    torch.manual_seed(0)
    base = TINY_MODELS[name]()
    model = copy.deepcopy(base)
    method = _ours(model, name, "kpa")
    perturb_adapters(model)
    ref = outputs(model)
    check_merge_unmerge(method, model, ref, TOL)
    sd = method.adapter_state_dict(model)
    # reload without calibration data: the saved initial factors rebuild the residual
    fresh = copy.deepcopy(base)
    build_method("corda", r=R, alpha=ALPHA, target_modules=TARGETS[name]).apply(fresh, adapter_state_dict=sd)
    assert max_diff(outputs(fresh), ref) < TOL
    # or calibrate on other data, then load: the base moves onto the saved residual
    fresh2 = copy.deepcopy(base)
    other = [tiny_inputs(seed=7, batch=1, seq=24) for _ in range(3)]
    m2 = _ours(fresh2, name, "kpa", calibration=other)
    m2.load_adapter_state_dict(fresh2, sd)
    assert max_diff(outputs(fresh2), ref) < TOL


def test_unknown_mode_is_refused():  # the yaml == dataclass check for every method: tests/test_configs.py
    with pytest.raises(MethodError, match="mode"):
        build_method("corda", mode="xyz")
