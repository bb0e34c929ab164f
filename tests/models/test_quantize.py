"""model.quantization on CPU with torchao (kasa.models.quantize): what trains, how far the output moves, the
decompose-then-quantise order of the SVD-initialised methods, refusals, merging, and a kasa-train run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

pytest.importorskip("torchao")

from conftest import tiny_inputs, tiny_llama  # noqa: E402

from kasa.config import CONF_DIR
from kasa.config.checks import check_config  # noqa: E402
from kasa.errors import ConfigError
from kasa.methods import MethodError, build_method, get_weight, is_quantized, quantized_kind  # noqa: E402  # noqa: E402
from kasa.models.quantize import (  # noqa: E402
    NF4_BLOCK_SIZE,
    QuantizationError,
    nf4_tensor,
    quantize_for_method,
    quantize_model,
    resolve_backend,
)
from kasa.recipe import run  # noqa: E402

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
# Methods whose init decomposes W (quantised after apply) and plain ones (quantised before), with small settings.
DECOMPOSING = {"kasa": dict(r=4), "pissa": dict(r=4), "milora": dict(r=4), "sara": dict()}
PLAIN = {"lora": dict(r=4), "dora": dict(r=4), "vera": dict(r=4), "kasa_none": dict(r=4, truncation="none")}


def _method(key: str, **extra):
    spec = {**DECOMPOSING, **PLAIN}[key]
    return build_method(key.split("_")[0], target_modules=TARGETS, **spec, **extra)


def _quantised(model, method, scheme="nf4"):
    quantize_for_method(model, method, scheme, "torchao", stage="before")
    method.apply(model)
    quantize_for_method(model, method, scheme, "torchao", stage="after")
    return model


def _nf4_fields(t) -> list[torch.Tensor]:
    return [getattr(t, k) for k in t.__tensor_flatten__()[0]]


@pytest.mark.parametrize("key", sorted({**DECOMPOSING, **PLAIN}))
def test_only_adapter_parameters_train_on_an_nf4_base(key):
    torch.manual_seed(0)
    model = tiny_llama()
    method = _method(key)
    _quantised(model, method)
    frozen_linears = [m for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lm_head" not in n]
    assert frozen_linears and all(is_quantized(m) for m in frozen_linears)  # every base linear, wrapped or not
    assert not is_quantized(model.lm_head)  # the head keeps its dtype
    model.train()
    x = tiny_inputs()
    (model(**x, labels=x["input_ids"]).loss + method.regularization_loss(model)).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable and trainable
    assert all(".base_layer." not in n and not n.endswith("proj.weight") for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


def test_output_stays_within_nf4s_error_of_the_full_precision_model():
    torch.manual_seed(0)
    full = tiny_llama()
    x = tiny_inputs()
    q = _quantised(copy.deepcopy(full), _method("lora"))  # B = 0: the adapter adds nothing yet
    # The reference: the full-precision model with every quantised weight replaced by its NF4 round trip.
    roundtrip = copy.deepcopy(full)
    with torch.no_grad():
        for n, m in roundtrip.named_modules():
            if type(m) is torch.nn.Linear and "lm_head" not in n:
                w = nf4_tensor(m.weight).get_original_weight()
                assert (w - m.weight).norm() / m.weight.norm() < 0.15  # 4 bits a weight: about 10% on Gaussians
                m.weight.copy_(w)
    with torch.no_grad():
        out, ref, fp = q(**x).logits, roundtrip(**x).logits, full(**x).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # exactly NF4's error, nothing more
    assert 0 < (out - fp).norm() / fp.norm() < 0.2


@pytest.mark.parametrize("key", sorted(DECOMPOSING))
def test_decompose_then_quantise_equals_quantising_the_decomposed_residual_bit_for_bit(key):
    torch.manual_seed(0)
    base = tiny_llama()
    dense = copy.deepcopy(base)
    _method(key).apply(dense)  # the full-precision residual, never quantised
    q = _quantised(copy.deepcopy(base), _method(key))
    checked = 0
    for n, m in q.named_modules():
        if type(m) is torch.nn.Linear and "lm_head" not in n:
            expected = nf4_tensor(dense.get_submodule(n).weight)
            got = m.weight
            assert quantized_kind(m) == "torchao NF4Tensor"
            assert all(torch.equal(a, b) for a, b in zip(_nf4_fields(got), _nf4_fields(expected)))
            checked += 1
    assert checked >= 2 * len(TARGETS)
    if key == "sara":  # SARA reads W's spectrum but leaves W as it is
        return
    # and it is not the quantisation of the ORIGINAL weight (the residual really was written first)
    wq = q.model.layers[0].self_attn.q_proj.base_layer.weight
    orig = nf4_tensor(base.model.layers[0].self_attn.q_proj.weight)
    assert not all(torch.equal(a, b) for a, b in zip(_nf4_fields(wq), _nf4_fields(orig)))


@pytest.mark.parametrize("key", sorted(DECOMPOSING) + ["corda"])
def test_an_svd_init_on_a_pre_quantised_layer_raises_naming_it(key):
    torch.manual_seed(0)
    model = tiny_llama()
    quantize_model(model, "nf4", "torchao")
    method = build_method("corda", r=4, target_modules=TARGETS) if key == "corda" else _method(key)
    before = {n: p.clone() for n, p in model.named_parameters() if p.dtype.is_floating_point and not is_quantized(
        model.get_submodule(n.rpartition(".")[0]))}
    with pytest.raises(MethodError, match=r"decomposes the weight of 'model\.layers\.0\.self_attn\.q_proj', which is "
                                          r"already quantised \(torchao NF4Tensor\)"):
        if key == "corda":
            method.apply(model, calibration=[tiny_inputs()])
        else:
            method.apply(model)
    assert not any(type(m).__name__.endswith("Layer") and hasattr(m, "base_layer") for m in model.modules())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_plain_methods_accept_a_pre_quantised_base_and_kasa_without_truncation_too():
    for key in PLAIN:
        torch.manual_seed(0)
        model = tiny_llama()
        quantize_model(model, "nf4", "torchao")
        _method(key).apply(model)  # no decomposition: fine on packed weights


def test_merge_refuses_on_a_quantised_base_and_dequantises_where_asked():
    torch.manual_seed(0)
    model = tiny_llama()
    method = _method("lora")
    _quantised(model, method)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    x = tiny_inputs()
    with torch.no_grad():
        unmerged = model(**x).logits
    with pytest.raises(MethodError, match=r"cannot merge 'model\.layers\.0\.self_attn\.q_proj' into its quantised base "
                                          r"weight \(torchao NF4Tensor\).*dequantize=True"):
        method.merge(model)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    method.merge_and_unload(model, dequantize=True)
    assert not any(is_quantized(m) for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj")))
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, unmerged, rtol=1e-4, atol=1e-5)


def test_get_weight_dequantises_and_set_weight_refuses():
    torch.manual_seed(0)
    model = tiny_llama()
    quantize_model(model, "nf4", "torchao")
    layer = model.model.layers[0].mlp.up_proj
    w = get_weight(layer)
    assert w.shape == (layer.out_features, layer.in_features) and w.dtype == torch.float32
    from kasa.methods import set_weight

    with pytest.raises(MethodError, match="cannot write into a quantised weight"):
        set_weight(layer, w)


def test_int8_weight_only_base_trains_lora_and_stays_close():
    torch.manual_seed(0)
    full = tiny_llama()
    x = tiny_inputs()
    q = _quantised(copy.deepcopy(full), _method("lora"), scheme="int8")
    assert quantized_kind(q.model.layers[0].self_attn.q_proj.base_layer) == "torchao Int8Tensor"
    with torch.no_grad():
        fp, out = full(**x).logits, q(**x).logits
    assert (out - fp).norm() / fp.norm() < 0.02  # 8 bits per weight, one scale per row
    q.train()
    q(**x, labels=x["input_ids"]).loss.backward()
    assert all(p.grad is not None for n, p in q.named_parameters() if p.requires_grad)


def test_odd_sized_layers_name_the_layer():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 5))
    assert 15 % NF4_BLOCK_SIZE
    with pytest.raises(QuantizationError, match="'0' has 15 weights, not a multiple of the NF4 block size 64"):
        quantize_model(lin, "nf4", "torchao")


def test_a_model_without_linear_layers_says_so():
    from conftest import tiny_gpt2

    with pytest.raises(QuantizationError, match="no nn.Linear layer to quantise outside the heads.*Conv1D"):
        quantize_model(tiny_gpt2(), "nf4", "torchao")


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("overrides,message", [
    (["model.quantization=nf3"], "model.quantization='nf3' is unknown; use null, nf4 or int8"),
    (["model.quantization_backend=gptq"], "model.quantization_backend='gptq' is unknown"),
    (["model.quantization=nf4", "model.quantization_backend=bitsandbytes"], "bitsandbytes needs a CUDA GPU"),
    (["model.quantization=nf4", "method=fft"], "method=fft trains the base model's own weights"),
    (["model.quantization=int8", "trainer.precision=bf16-true"], "precisions cast every parameter"),
])
def test_bad_quantisation_settings_fail_in_one_line_before_loading(overrides, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message) as exc:
        check_config(_cfg("model=smollm2", "benchmark=e2e", *overrides))
    assert "\n" not in str(exc.value)


def test_auto_backend_is_torchao_without_cuda():
    assert resolve_backend("nf4", "auto", cuda=False) == "torchao"


@pytest.mark.parametrize("method", ["kasa", "lora"])
def test_kasa_train_on_an_nf4_base_and_reload_the_run(method, tiny_causal_dir, tmp_path, commonsense_data):
    from kasa.runs.load import load_run

    d = tmp_path / method
    res = run(_cfg(f"model.name_or_path={tiny_causal_dir}", "benchmark=commonsense", f"method={method}", "method.r=4",
                   "model.quantization=nf4", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "dataset.max_eval=2", "benchmark.generation.max_new_tokens=4", "benchmark.batch_size=4",
                   "benchmark.eval_batch_size=4", "trainer.enable_progress_bar=false", *commonsense_data), run_dir=d)
    assert json.loads((d / "results.json").read_text())["config"]["model"]["quantization"] == "nf4"
    assert res["params"]["trainable"] > 0
    loaded = load_run(d, "last")
    q = loaded.model.model.layers[0].self_attn.q_proj
    assert quantized_kind(q.base_layer) == "torchao NF4Tensor"  # rebuilt as it trained
    with pytest.raises(MethodError, match="quantised base"):
        loaded.method.merge(loaded.model)
    if method != "lora":
        return
    # kasa-export: merged needs --dequantize (refused before any model loads), then loads without kasa
    from transformers import AutoModelForCausalLM

    from kasa.cli.export import main as export_main
    from kasa.errors import ExportError
    from kasa.runs.export import export_run

    with pytest.raises(ExportError, match="model.quantization=nf4 base: --format merged needs --dequantize"):
        export_run(d, "merged", tmp_path / "merged-refused")
    assert not (tmp_path / "merged-refused").exists()
    assert export_main([str(d), "--format", "merged", "--out", str(tmp_path / "m"), "--checkpoint", "last",
                        "--dequantize"]) == 0
    x = {"input_ids": torch.tensor([[1, 5, 9, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "m")(**x).logits,
                                   loaded.model(**x).logits, rtol=1e-4, atol=1e-4)


def test_null_quantization_keeps_the_hash_of_runs_made_before_the_key_existed():
    from omegaconf import OmegaConf

    from kasa.analysis.report import pooling_hash
    from kasa.runs.hashing import config_hash

    cfg = _cfg("method=lora")
    old = OmegaConf.create(OmegaConf.to_container(cfg))
    del old.model["quantization"], old.model["quantization_backend"]  # a config written before the keys existed
    assert config_hash(cfg) == config_hash(old)
    assert pooling_hash(OmegaConf.to_container(cfg)) == pooling_hash(OmegaConf.to_container(old))
    assert config_hash(_cfg("method=lora", "model.quantization=nf4")) != config_hash(cfg)
    nf4 = [config_hash(_cfg("method=lora", "model.quantization=nf4", f"model.quantization_backend={b}"))
           for b in ("auto", "torchao")]
    assert nf4[0] != nf4[1]  # with a quantised base the backend is part of the computation


@pytest.mark.slow  # a fresh interpreter importing torch, transformers and torchao: ~7 s (8 min CI budget)
def test_importing_torchao_through_kasa_logs_none_of_its_cpu_noise():
    import subprocess
    import sys

    code = ("import kasa\nfrom transformers import LlamaForCausalLM\nimport torchao.quantization\n"
            "import logging; logging.getLogger('torchao').warning('a real torchao warning')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Failed to load" not in res.stderr and "is an Enum subclass" not in res.stderr
    assert "a real torchao warning" in res.stderr  # the filter drops only those records


@pytest.mark.parametrize("autocast,expected", [(True, torch.float32), (False, torch.bfloat16)])
def test_adapters_on_an_nf4_bf16_base_are_float32_or_bf16_where_asked(autocast, expected):
    torch.manual_seed(0)
    model = tiny_llama().to(torch.bfloat16)
    for key in ("lora", "kasa"):
        m = copy.deepcopy(model)
        method = _method(key, autocast_adapter_dtype=autocast)
        _quantised(m, method)
        assert quantized_kind(m.model.layers[0].self_attn.q_proj.base_layer) == "torchao NF4Tensor"
        dtypes = {p.dtype for n, p in m.named_parameters() if p.requires_grad and "lm_head" not in n}
        assert dtypes == {expected}, (key, dtypes)
        m.train()
        x = tiny_inputs()
        m(**x, labels=x["input_ids"]).loss.backward()
        assert all(p.grad is not None and p.grad.dtype == expected for n, p in m.named_parameters()
                   if p.requires_grad and "lm_head" not in n)


def test_kasa_keep_removed_and_the_truncation_cache_work_on_an_nf4_base(tmp_path):
    """The truncation runs at full precision before quantising: its cache is written and read as without
    quantisation, and keep_removed's factors give the exact plain-LoRA export of the trained layers."""
    torch.manual_seed(0)
    base = tiny_llama()
    models = []
    for _ in range(2):  # the second apply reads the cache the first one wrote
        m = copy.deepcopy(base)
        method = _method("kasa", keep_removed=True, truncation_cache=str(tmp_path / "cache"))
        _quantised(m, method)
        models.append((m, method))
    assert any((tmp_path / "cache").rglob("*"))
    (m1, k1), (m2, _) = models
    layers = [(a, b) for (n, a), (_, b) in zip(m1.named_modules(), m2.named_modules()) if hasattr(a, "kasa_removed_us")]
    assert layers
    for a, b in layers:  # the same removed part (the cache keeps the factors; signs and last bits may differ)
        torch.testing.assert_close(a.kasa_removed_us @ a.kasa_removed_vh, b.kasa_removed_us @ b.kasa_removed_vh,
                                   rtol=1e-5, atol=1e-6)
        assert quantized_kind(b.base_layer) == "torchao NF4Tensor"
    lora, sd = k1.export_lora(m1)
    assert any(k.endswith("lora_A") for k in sd) and lora.config.r == 8  # t + r = 4 + 4
