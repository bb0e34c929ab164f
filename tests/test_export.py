"""kasa-export: every method x {tiny BERT classifier, tiny Llama causal LM} in every format it has, loaded in ONE
fresh subprocess that cannot import kasa (PEFT and transformers only), gives kasa's logits (max abs diff <= 1e-5,
float32); formats a method does not have are refused in one line that names the alternatives."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_inputs

import kasa.methods
from kasa.methods import MethodError, build_method
from kasa.methods.export import FORMAT_NAMES, FORMATS, check_format, formats
from kasa.runs.export import export_model

MODELS = ("bert", "llama")
TASKS = {"bert": ("seq_cls", "SEQ_CLS"), "llama": ("causal_lm", "CAUSAL_LM")}
METHODS = sorted(kasa.methods.REGISTRY)
TOL = 1e-5
# Small ranks for the 32-wide models; KaSA keeps its removed triplets (its plain-LoRA form is built from them; a run
# that did not keep them re-derives them, tests/test_export_run.py).
KWARGS = {
    "adalora": dict(init_r=4, target_r=2, total_steps=3), "corda": dict(r=4), "dora": dict(r=4, dropout=0.0),
    "dylora": dict(r=4, eval_rank=3), "kasa": dict(r=2, keep_removed=True), "lora": dict(r=4), "milora": dict(r=4),
    "pissa": dict(r=4), "sara": dict(threshold=0.3, max_rank=4), "vera": dict(r=4),
    **{a: dict(bottleneck=4) for a in ("adapter_h", "adapter_p", "adapter_l")},
    "adapter_d": dict(bottleneck=4, drop_layers=1),
}
SKIP = {("bitfit", "llama")}  # Llama has no bias terms

# Runs with kasa blocked from import: loads every case with PEFT / transformers, writes the logits.
LOADER = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoKasa(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "kasa" or name.startswith("kasa."):
                raise ImportError("kasa must not be needed to load an export")

    sys.meta_path.insert(0, NoKasa())
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cases = json.load(open(sys.argv[1]))
    x = load_file(sys.argv[2])
    out, errors = {}, {}
    for key, c in cases.items():
        cls = AutoModelForSequenceClassification if c["task"] == "seq_cls" else AutoModelForCausalLM
        try:
            if c["fmt"] == "merged":
                model = cls.from_pretrained(c["dir"])
            else:
                model = PeftModel.from_pretrained(cls.from_pretrained(c["base"]), c["dir"])
            with torch.no_grad():
                out[key] = model.eval()(**x).logits.contiguous()
        except Exception as exc:
            errors[key] = f"{type(exc).__name__}: {exc}"
    save_file(out, sys.argv[3])
    json.dump({"errors": errors, "kasa_imported": [m for m in sys.modules if m.split(".")[0] == "kasa"]},
              open(sys.argv[4], "w"))
''')


def _train(method, model, steps: int = 3) -> None:
    """A few AdamW steps on a stand-in loss with the loop's hooks, then noise on the adapter tensors and a larger
    head (a tiny BERT's logits are ~0.02 and move mostly through its head in 3 steps): the adapter's own share of
    the logits is then far above the tolerance."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2, weight_decay=0.0)
    model.train()
    for step in range(steps):
        method.on_before_forward(model, step)
        loss = (model_output(model, tiny_inputs(seed=10 + step)) ** 2).mean() + method.regularization_loss(model)
        loss.backward()
        opt.step()
        method.on_train_step(model, step + 1, steps)
        opt.zero_grad()
    with torch.no_grad():
        for layer in method.adapter_layers(model):
            for pname, p in layer.named_parameters():
                if p.requires_grad and not pname.startswith("base_layer."):
                    p.add_(0.1 * torch.randn_like(p))
        for p in method.head_parameters(model):  # a random 0.02-std head gives ~0.02 logits: scale them to O(1)
            p.mul_(50.0)
    model.eval()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Export every (method, model, format); load all of them in one subprocess. Returns
    ``{(method, model, fmt): (kasa logits, loaded logits or error)}``, the base models' logits and how much the
    adapter alone (disabled vs enabled, trained head kept) moves the logits."""
    root = tmp_path_factory.mktemp("export-matrix")
    x = tiny_inputs(seed=3)
    cases, expected, base_out, adapter_effect = {}, {}, {}, {}
    for mname in MODELS:
        torch.manual_seed(0)
        base = TINY_MODELS[mname]()
        base_dir = root / f"base-{mname}"
        base.save_pretrained(base_dir)
        with torch.no_grad():
            base_out[mname] = model_output(base, x)
        task, task_type = TASKS[mname]
        for meth in METHODS:
            if (meth, mname) in SKIP or not formats(meth):
                continue
            model = copy.deepcopy(base)
            method = build_method(meth, **KWARGS.get(meth, {}))
            if getattr(method, "needs_calibration", False):
                method.apply(model, calibration=[tiny_inputs(seed=7)])
            else:
                method.apply(model)
            torch.manual_seed(1)
            _train(method, model)
            with torch.no_grad():
                want = model_output(model, x)
                if any(True for _ in method.adapter_layers(model)):  # the adapter's own share, head aside
                    method.set_adapter_enabled(model, False)
                    adapter_effect[(meth, mname)] = (want - model_output(model, x)).abs().max().item()
                    method.set_adapter_enabled(model, True)
            for fmt in sorted(formats(meth), key=lambda f: f == "merged"):  # merged last: it unloads the adapter
                d = root / f"{meth}-{mname}-{fmt}"
                export_model(model, method, fmt, d, base_model=str(base_dir), task_type=task_type)
                key = f"{meth}|{mname}|{fmt}"
                cases[key] = {"task": task, "fmt": fmt, "dir": str(d), "base": str(base_dir)}
                expected[key] = want
    from safetensors.torch import load_file, save_file

    (root / "cases.json").write_text(json.dumps(cases))
    save_file({k: v.contiguous() for k, v in x.items()}, root / "inputs.safetensors")
    (root / "loader.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [root / "loader.py", root / "cases.json", root / "inputs.safetensors", root / "out.safetensors",
            root / "report.json"]
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(root / "out.safetensors")
    report = json.loads((root / "report.json").read_text())
    assert report["kasa_imported"] == []
    results = {tuple(k.split("|")): (expected[k], got.get(k, report["errors"].get(k))) for k in cases}
    return results, base_out, adapter_effect


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method_name", METHODS)
def test_every_export_loads_without_kasa_and_gives_kasas_logits(matrix, method_name, model_name):
    results, base_out, adapter_effect = matrix
    if (method_name, model_name) in SKIP:
        pytest.skip("bitfit: Llama has no bias terms")
    fmts = formats(method_name)
    if not fmts:
        assert not [k for k in results if k[0] == method_name]
        return
    for fmt in fmts:
        want, got = results[(method_name, model_name, fmt)]
        assert isinstance(got, torch.Tensor), f"{fmt}: {got}"
        # the trained model (and its adapter alone) differs from the base, so matching logits say the export carries it
        assert (want - base_out[model_name]).abs().max() > 1e-3, f"{method_name} barely changed the model"
        assert adapter_effect.get((method_name, model_name), 1.0) > 1e-3, f"{method_name}: the adapter changes nothing"
        diff = (got - want).abs().max().item()
        assert diff <= TOL, f"{method_name} --format {fmt} on {model_name}: max abs diff {diff:.2e}"


def test_formats_cover_the_registry_and_every_method_but_the_adapters_leaves_kasa():
    assert set(FORMATS) == set(METHODS), "a new method needs its export formats in kasa.methods.export.FORMATS"
    assert all(set(f) <= set(FORMAT_NAMES) for f in FORMATS.values())
    assert {m for m, f in FORMATS.items() if not f} == {"adapter_h", "adapter_p", "adapter_l", "adapter_d"}
    low_rank = {"kasa", "pissa", "milora", "corda", "dylora", "adalora", "sara", "lora", "vera"}
    assert {m for m, f in FORMATS.items() if "lora" in f} == low_rank


@pytest.mark.parametrize("method_name,fmt,says", [
    ("dora", "lora", "magnitude"), ("adapter_h", "merged", "nonlinear"), ("milora", "peft", "lora"),
    ("fft", "lora", "full rank"), ("bitfit", "peft", "merged"), ("lora", "onnx", "unknown"),
])
def test_a_format_a_method_lacks_is_one_line_naming_the_alternative(method_name, fmt, says):
    with pytest.raises(MethodError) as err:
        check_format(method_name, fmt)
    msg = str(err.value)
    assert "\n" not in msg and says in msg
    if formats(method_name) and fmt in FORMAT_NAMES:
        assert all(f in msg for f in formats(method_name))  # "it exports as lora or merged"


@pytest.mark.parametrize("kwargs,says", [({"truncation": "reference"}, "truncation=reference"),
                                         ({"truncation_rank": 3}, "truncation_rank=3"),
                                         ({"singular_values": "off"}, "singular_values=off")])
def test_kasa_variants_peft_lacks_are_refused_for_peft_only(kwargs, says):
    cfg = build_method("kasa", r=2, **kwargs).config
    with pytest.raises(MethodError, match=says):
        check_format("kasa", "peft", cfg)
    check_format("kasa", "lora", cfg)  # exact on the original base whatever the truncation


def test_kasa_reference_truncation_exports_an_exact_lora(tmp_path):
    """A truncation PEFT has no form of (the reference code's in - t components) still leaves as a plain LoRA."""
    from peft import PeftModel

    torch.manual_seed(0)
    base = TINY_MODELS["llama"]()
    base.save_pretrained(tmp_path / "base")
    model = copy.deepcopy(base)
    method = build_method("kasa", r=2, truncation="reference", truncation_rank=3, keep_removed=True)
    method.apply(model)
    _train(method, model)
    x = tiny_inputs()
    with torch.no_grad():
        want = model_output(model, x)
    export_model(model, method, "lora", tmp_path / "lora", base_model=str(tmp_path / "base"))
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 + 2 and cfg["lora_alpha"] == cfg["r"]  # wide layers dropped fewer: zero-padded to one rank
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora").eval()
    with torch.no_grad():
        assert (model_output(loaded, x) - want).abs().max() <= TOL


def test_plain_lora_export_has_only_lora_keys_for_a_causal_lm(tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    model = TINY_MODELS["llama"]()
    method = build_method("pissa", r=4)
    method.apply(model)
    export_model(model, method, "lora", tmp_path / "out", base_model="x")
    with safe_open(tmp_path / "out" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
                        for k in keys)
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 8 and cfg["modules_to_save"] is None and not cfg["use_rslora"]


def test_export_refuses_a_non_empty_folder(tmp_path):
    from kasa.errors import ExportError

    model = TINY_MODELS["bert"]()
    method = build_method("lora", r=2)
    method.apply(model)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(model, method, "lora", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_params_command_states_every_methods_export_formats(capsys):
    from kasa.cli.params import main

    main(["--models", "roberta-base"])
    out = capsys.readouterr().out
    assert "  kasa: peft lora merged" in out and "  dora: peft merged" in out and "  adapter_h: none" in out


@pytest.mark.parametrize("name", ["lora", "kasa"])
def test_half_precision_base_exports_float32_adapters_that_peft_loads(name, tmp_path):
    """On a bfloat16 base kasa trains float32 adapters (as PEFT's autocast_adapter_dtype): the export keeps them
    float32, so PEFT's model computes what kasa's does."""
    from peft import PeftModel
    from safetensors.torch import load_file

    torch.manual_seed(0)
    base = TINY_MODELS["llama"]().to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    model = copy.deepcopy(base)
    method = build_method(name, **KWARGS[name])
    method.apply(model)
    _train(method, model)
    x = tiny_inputs()
    with torch.no_grad():
        want = model_output(model, x).float()
    for fmt in ("peft", "lora"):
        export_model(model, method, fmt, tmp_path / fmt, base_model=str(tmp_path / "base"))
        tensors = load_file(tmp_path / fmt / "adapter_model.safetensors")
        assert {v.dtype for v in tensors.values()} == {torch.float32}
        loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / fmt).eval()
        with torch.no_grad():
            diff = (model_output(loaded, x).float() - want).abs().max().item()
        # LoRA: the same computation (below one bfloat16 step); KaSA: its truncated base is rounded to bfloat16
        # (kasa's, PEFT's, or W + the float32 LoRA of the removed part): a bfloat16 step of these ~0.4 logits is 2e-3
        assert diff <= (1e-3 if name == "lora" else 4e-3), f"{fmt}: {diff}"
