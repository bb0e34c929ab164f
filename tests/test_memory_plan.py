"""The memory planner (kasa.perf.memory_plan, `python -m kasa.params --memory`): its meta-device estimates against the
bytes the CPU benchmark counts on real tensors, its quantised-weight bytes against torchao's NF4 tensors, and its
CLI."""

from __future__ import annotations

import pytest
import torch

from kasa.cli.params import main as params_main
from kasa.perf import memory_plan as mp
from kasa.perf.core import PROFILES
from kasa.perf.methods import ALL_METHODS

TOLERANCE = 0.10
# SARA's per-layer ranks come from the pretrained spectrum: the meta device cannot choose them
METHODS_ON_META = [m for m in ALL_METHODS if m != "sara"]


def _assert_close(rows, methods):
    assert [r["method"] for r in rows] == list(methods)
    for row in rows:
        assert "error" not in row, row
        for comp in mp.COMPONENTS:
            counted, est = row["counted"][comp], row["estimate"][comp]
            assert abs(est - counted) <= TOLERANCE * counted or est == counted == 0, (row["method"], comp, est, counted)
        assert abs(row["weights"] - 1) <= TOLERANCE, (row["method"], row["weights"])
        assert row["counted"]["saved"] > 0 and row["counted"]["total"] > 0


def test_estimates_match_counted_bytes_tiny_every_method():
    rows = mp.compare_with_bench("tiny", METHODS_ON_META)
    _assert_close(rows, METHODS_ON_META)
    by = {r["method"]: r for r in rows}
    assert by["fft"]["counted"]["trainable"] > 4 * by["lora"]["counted"]["trainable"]  # the rows differ for real
    assert by["vera"]["counted"]["buffers"] > 0 and by["lora"]["counted"]["buffers"] == 0


def test_estimates_match_counted_bytes_quick():
    methods = ["kasa", "lora", "fft"]
    _assert_close(mp.compare_with_bench("quick", methods), methods)


@pytest.mark.parametrize("method", ["kasa", "lora", "fft"])
def test_totals_against_the_cpu_peak_of_live_tensors(method):
    """With and without gradient checkpointing, against torch's memory-profiler peak of one real CPU step: the
    static part is what is alive when the step starts; the total is within 10% of the peak for the adapters and
    above it for FFT (whose gradients, as large as its weights, are counted alongside the activations)."""
    p = PROFILES["tiny"]
    for ckpt in (False, True):
        r = mp.cpu_peak_check("perf:tiny", method, p.batch, p.seq, checkpointing=ckpt)
        assert abs(r["static_ratio"] - 1) <= 0.01, r
        if method == "fft":
            assert 1.0 <= r["total_ratio"] <= 1.25, r
        else:
            assert abs(r["total_ratio"] - 1) <= TOLERANCE, r


def test_sara_is_reported_not_dropped():
    (row,) = mp.compare_with_bench("tiny", ["sara"])
    assert "pretrained spectrum" in row["error"]


def test_checkpointing_keeps_one_hidden_state_per_block():
    """Doubling the depth adds one block input (batch x seq x hidden, float32) per added block to the checkpointed
    estimate, and every added block's saved tensors to the plain one."""
    from kasa.perf.core import build_llama

    p = PROFILES["tiny"]
    est = {}
    for layers in (2, 4):
        q = type(p)(**{**p.__dict__, "device": "meta", "layers": layers})
        est[layers] = mp.estimate(build_llama(q), mp.perf_method("lora", layers), p.batch, p.seq, name=f"{layers}")
    hidden = p.batch * p.seq * p.hidden * 4
    assert est[4].activations_ckpt - est[2].activations_ckpt == 2 * hidden
    per_block = (est[4].activations - est[2].activations) // 2
    assert per_block > 3 * hidden  # a block saves far more than its input
    assert est[2].activations_ckpt < est[2].activations


def test_nf4_bytes_match_torchao():
    try:
        from torchao.dtypes import to_nf4
    except ImportError:
        to_nf4 = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor").to_nf4
    for shape in [(256, 256), (512, 1376)]:
        t = to_nf4(torch.randn(*shape))
        actual = sum(getattr(t, k).numel() * getattr(t, k).element_size()
                     for k in ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4"))
        ours = mp.quantized_bytes(shape[0] * shape[1], shape[0], "nf4")
        assert 0 <= actual - ours <= 128, (shape, actual, ours)  # the 16-value table and the mean are left out


def test_quantisation_covers_frozen_linears_except_heads():
    e = {q: mp.estimate_named("perf:tiny", "lora", 2, 8, quantization=q) for q in (None, "nf4", "int8")}
    model = mp.build_meta("perf:tiny")
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    lin_bytes = sum(m.weight.numel() * 4 for m in linears)
    rest = e[None].weights - lin_bytes  # embeddings, norms, biases, lm_head: float32 in every case
    assert e["nf4"].weights == rest + sum(mp.quantized_bytes(m.weight.numel(), m.out_features, "nf4") for m in linears)
    assert e["int8"].weights == rest + sum(m.weight.numel() + 4 * m.out_features for m in linears)
    assert e["nf4"].transient == max(m.weight.numel() * 4 for m in linears) and e[None].transient == 0
    assert e["nf4"].activations == e[None].activations and e["nf4"].trainable == e[None].trainable
    with pytest.raises(mp.MemoryPlanError, match="fft trains every base weight"):
        mp.estimate_named("perf:tiny", "fft", 2, 8, quantization="nf4")


def test_paper_model_half_precision_adapters_in_float32():
    e = mp.estimate_named("llama-2-7b", "kasa", 1, 16)
    assert e.dtype == "bfloat16"  # conf/model/llama-2-7b.yaml
    total_params = sum(p.numel() for p in mp.build_meta("llama-2-7b").parameters())
    assert e.trainable == 4 * e.trainable_params  # float32 adapters on the bfloat16 base
    assert e.weights == 2 * total_params  # KaSA's residual keeps every base weight's shape, frozen, in bfloat16
    targets = 5 * 32  # q, k, v, up, down in 32 layers, three tensors each (A, B, the singular values)
    assert e.adamw == 2 * e.trainable + 4 * 3 * targets
    q = mp.estimate_named("llama-2-7b", "kasa", 1, 16, quantization="nf4")
    assert q.weights < 0.3 * e.weights


def test_seq_beyond_positions_and_bad_dtype_raise_one_line():
    with pytest.raises(mp.MemoryPlanError, match="exceeds roberta-base's 512 positions"):
        mp.estimate_named("roberta-base", "lora", 1, 600)
    with pytest.raises(mp.MemoryPlanError, match="dtype='half8' is unknown"):
        mp.estimate_named("roberta-base", "lora", 1, 16, dtype="half8")


def test_cli_table_and_bad_options(capsys):
    assert params_main(["--memory", "--models", "perf:tiny", "roberta-base", "--methods", "kasa", "lora",
                        "--seq", "32", "--gpu", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "### perf:tiny: float32, batch 2 x seq 32" in out and "### roberta-base: float32, batch 4 x seq 32" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| kasa |") or ln.startswith("| lora |")]
    assert len(rows) == 4 and all(ln.rstrip(" |").endswith(("yes", "ckpt", "no")) for ln in rows)
    assert any(ln.endswith("| yes |") for ln in rows) and any(ln.endswith("| no |") for ln in rows)
    for argv, msg in [(["--memory", "--quantization", "nf5"], "--quantization=nf5: choose one of null nf4 int8"),
                      (["--memory", "--batch", "0"], "--batch=0: must be at least 1"),
                      (["--memory", "--models", "llama-9b"], "unknown model(s) llama-9b"),
                      (["--seq", "8"], "--seq: memory-planner options, give --memory too")]:
        with pytest.raises(SystemExit) as exc:
            params_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_cli_against_bench(capsys):
    assert params_main(["--memory", "--models", "perf:tiny", "--methods", "lora", "--against-bench"]) == 0
    out = capsys.readouterr().out
    worst = float(out.rsplit("largest deviation of a counted component from 1:", 1)[1])
    assert 0 <= worst <= TOLERANCE and out.count("| perf:tiny |") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocator_against_the_estimate():
    """On a GPU (RoBERTa-base, float32, 8 x 512: large enough that cuBLAS workspaces are a few percent): the static
    estimate is what is allocated before a step, and the total is of the peak's size (it counts gradients and
    activations as if alive together, the peak has workspaces the planner does not model)."""
    for method in ("kasa", "lora", "fft"):
        for ckpt in (False, True):
            r = mp.cuda_check("roberta-base", method, 8, 512, "float32", checkpointing=ckpt)
            assert abs(r["static_ratio"] - 1) <= TOLERANCE, r
            assert 0.75 <= r["total_ratio"] <= 2.0, r


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_planned_quantised_weights_match_what_quantize_model_holds(scheme):
    """The planner's frozen-weight bytes against the tensors kasa.models.quantize really builds (torchao),
    for a plain method (quantised before apply) and an SVD init (quantised after): within 10%."""
    pytest.importorskip("torchao")
    import copy

    from conftest import tiny_llama

    from kasa.methods import build_method
    from kasa.models.quantize import quantize_for_method

    def storage(t: torch.Tensor) -> int:
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None:
            return sum(storage(getattr(t, k)) for k in inner()[0])
        return t.numel() * t.element_size()

    for name in ("lora", "pissa"):
        torch.manual_seed(0)
        model = tiny_llama()
        planned_model, method = copy.deepcopy(model), build_method(name, r=4)
        method.apply(planned_model)
        planned, _ = mp.frozen_weight_bytes(planned_model, method, scheme)
        method = build_method(name, r=4)
        quantize_for_method(model, method, scheme, "torchao", stage="before")
        method.apply(model)
        quantize_for_method(model, method, scheme, "torchao", stage="after")
        held = sum(storage(p) for p in model.parameters() if not p.requires_grad)
        assert abs(planned / held - 1) < 0.10, (name, scheme, planned, held)


def test_shallow_table_equals_whole_model_table():
    """issue 21: the planner's fast path (2 and 3 blocks, extended to the model's depth) gives the same table as the
    whole-model measurement; adapter_d (static drop_layers=5) is measured at 7 and 8 blocks, its random-drop preset
    (whose range depends on the depth) on the whole model."""
    from kasa.perf.memory_plan import plan_table

    models = ["roberta-base", "llama-2-7b"]
    methods = ["kasa", "lora", "adapter_d", "adapter_d_roberta_base_0p3m", "vera", "bitfit"]
    fast = plan_table(models, methods, quantization=None, shallow=True)
    slow = plan_table(models, methods, quantization=None, shallow=False)
    assert fast == slow
    assert plan_table(["llama-2-7b"], ["dora"], quantization="nf4", shallow=True) == \
        plan_table(["llama-2-7b"], ["dora"], quantization="nf4", shallow=False)


def test_method_settings_without_hydra_equal_composed():
    """kasa.config.presets: a registry name's settings come from its schema without Hydra, as compose gives them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from kasa.config import CONF_DIR, register
    from kasa.config.presets import _composed

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="t"):
        for name in ("kasa", "lora", "adalora", "vera", "adapter_d"):
            composed = OmegaConf.to_container(compose("train", overrides=[f"method={name}"]).method, resolve=True)
            assert _composed(name) == composed, name


@pytest.mark.parametrize("model", ["roberta-base", "llama-2-7b"])
def test_one_forward_gives_the_model_one_block_shallower(model):
    """issue 21: the estimate of a 2-block model read from the forward of the 3-block one (its last block taken
    away) equals the 2-block model measured; adapter_l wraps whole blocks, KaSA and AdaLoRA add a regulariser,
    adapter_d (drop_layers=5) at 8 blocks."""
    for method, layers in [("lora", 3), ("kasa", 3), ("adalora", 3), ("adapter_l", 3), ("fft", 3), ("adapter_d", 8)]:
        full, fewer = mp._estimate_named(model, method, 2, 64, layers=layers, without_last=True)
        assert fewer is not None, (model, method)
        assert fewer == mp.estimate_named(model, method, 2, 64, layers=layers - 1), (model, method)
        assert full == mp.estimate_named(model, method, 2, 64, layers=layers), (model, method)
        assert fewer.activations < full.activations and fewer.total() < full.total()


def test_caches_give_the_uncached_plan():
    """issue 21: the planner's caches (one meta build per model and depth, copied per method; the output shapes of
    meta operations replayed) change no number: the same estimates as every model built anew and every meta
    operation run, and no cached model is changed by the methods applied to its copies."""
    cells = [("roberta-base", "vera", None), ("llama-2-7b", "kasa", "nf4"), ("llama-2-7b", "dora", None),
             ("deberta-v3-base", "adapter_h", None), ("gpt2-medium", "lora", "int8")]
    cached = [mp.estimate_shallow(m, meth, 2, 64, quantization=q) for m, meth, q in cells]
    with mp.uncached():
        uncached = [mp.estimate_shallow(m, meth, 2, 64, quantization=q) for m, meth, q in cells]
    assert cached == uncached
    assert [mp.estimate_shallow(m, meth, 2, 64, quantization=q) for m, meth, q in cells] == cached
    model = mp.build_meta("llama-2-7b", layers=3)
    assert all(p.requires_grad for p in model.parameters())  # no method left its freeze on the cached build
