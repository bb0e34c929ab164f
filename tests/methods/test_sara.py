"""SARA: the per-layer rank follows the spectrum rule; the adapter starts on the principal components."""

from __future__ import annotations

import pytest
import torch
from _baseline_checks import check_forward_merge_roundtrip, fresh
from conftest import model_output, tiny_inputs
from torch import nn

from kasa.methods import MethodError, build_method
from kasa.methods.sara import SaraLayer, sara_rank


def test_save_load_frozen_vectors():
    # the default (vectors train) is in test_matrix.py; frozen U_k / V_k must still merge and reload
    check_forward_merge_roundtrip("sara", "bert", threshold=0.3, train_vectors=False)


def _model_with_spectrum(s: list[float], out_f: int = 12, in_f: int = 10) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(out_f, len(s), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_f, len(s), generator=g, dtype=torch.float64))
    model = nn.Sequential()
    model.add_module("lin", nn.Linear(in_f, out_f))
    model.add_module("wide", nn.Linear(out_f, in_f))  # (in x out) orientation too
    with torch.no_grad():
        w = U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T
        model.lin.weight.copy_(w.float())
        model.wide.weight.copy_(w.T.float())
    return model


SPECTRUM = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125]  # sum 16.0


@pytest.mark.parametrize("threshold,energy,expected", [
    (0.5, "sum", 1),     # 8 / 16 = 0.5 reaches it exactly (a tie: float64, exact binary values)
    (0.51, "sum", 2),    # 12 / 16 = 0.75
    (0.76, "sum", 3),    # 14 / 16 = 0.875
    (0.9, "sum", 4),     # 15 / 16 = 0.9375
    (1.0, "sum", 10),
    (0.8, "squared", 2),  # s^2: 64 / 85.33 = 0.75, 80 / 85.33 = 0.9375
])
def test_rank_rule_on_exact_spectrum(threshold, energy, expected):
    # Every value is a power of two, so the float64 sums are exact and a threshold ON a partial share is a
    # real tie: the rule says "reaches", so the share equal to the threshold counts.
    assert sara_rank(torch.tensor(SPECTRUM, dtype=torch.float64), threshold, energy) == expected


@pytest.mark.parametrize("threshold,energy,expected", [
    (0.45, "sum", 1),    # 0.5: shares 0.5, 0.75, 0.875, 0.9375 are >= 0.01 away from every threshold here
    (0.55, "sum", 2),
    (0.76, "sum", 3),
    (0.9, "sum", 4),
    (1.0, "sum", 10),
    (0.8, "squared", 2),
])
def test_rank_follows_rule_on_known_spectrum(threshold, energy, expected):
    # Through a float32 weight the spectrum is only known to ~1e-7 (and which BLAS kernel the SVD uses moves
    # it), so the thresholds sit off the partial shares; the tie itself is tested above in float64.
    # threshold 1.0 needs the whole spectrum: sara_rank's relative tolerance absorbs the rounding of the total.
    model = _model_with_spectrum(SPECTRUM)
    method = build_method("sara", threshold=threshold, energy=energy, target_modules=["lin", "wide"],
                          modules_to_save=[])
    method.apply(model)
    assert method.ranks(model) == {"lin": expected, "wide": expected}


def test_rank_clamps_and_principal_init():
    s = torch.tensor(SPECTRUM)
    assert sara_rank(s, 0.9, min_rank=6) == 6
    assert sara_rank(s, 0.99, max_rank=3) == 3
    model = _model_with_spectrum(SPECTRUM)
    method = build_method("sara", threshold=0.9, target_modules=["lin"], modules_to_save=[])
    x = torch.randn(3, 10)
    before = model(x)
    method.apply(model)
    layer = model.lin
    assert isinstance(layer, SaraLayer) and layer.r == 4
    # principal components: U_k diag(s_k) V_k^T is the best rank-4 approximation of W
    w = layer.base_layer.weight.double()
    U, S, Vh = torch.linalg.svd(w)
    approx = layer.lora_B.double() @ torch.diag(S[:4]) @ layer.lora_A.double()
    torch.testing.assert_close(approx, U[:, :4] @ torch.diag(S[:4]) @ Vh[:4], atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.lora_B.T @ layer.lora_B, torch.eye(4), atol=1e-5, rtol=0)
    # singular-value vector starts at zero: the model is unchanged, only it (and U, V) train
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"lin.lora_A", "lin.lora_B",
                                                                           "lin.lora_diag"}
    only_sv = build_method("sara", threshold=0.9, train_vectors=False, target_modules=["lin"], modules_to_save=[])
    model2 = _model_with_spectrum(SPECTRUM)
    only_sv.apply(model2)
    assert only_sv.trainable_parameter_count(model2) == 4


def test_bad_config():
    with pytest.raises(MethodError):
        build_method("sara", threshold=0.0)
    with pytest.raises(MethodError):
        build_method("sara", energy="entropy")


def test_tiny_model_ranks_vary_with_threshold():
    ranks = []
    for thr in (0.2, 0.6):
        model = fresh("llama")
        method = build_method("sara", threshold=thr)
        method.apply(model)
        ranks.append(method.ranks(model))
        with torch.no_grad():
            assert torch.isfinite(model_output(model, tiny_inputs())).all()
    assert all(ranks[0][n] <= ranks[1][n] for n in ranks[0]) and ranks[0] != ranks[1]


def test_unverified_threshold_is_said_wherever_sara_numbers_appear(tmp_path, capsys):
    import json

    import kasa.methods.sara as sara_mod
    from kasa.analysis.report import build_tables, collect
    from kasa.cli.params import main

    assert "Threshold unverified" in sara_mod.__doc__
    main(["--methods", "sara", "--models", "roberta-base"])
    assert sara_mod.UNVERIFIED_NOTE in capsys.readouterr().out
    res = {"method": "sara", "model": "roberta-base", "dataset": "glue_mrpc", "seed": 0,
           "config": {"method": {"name": "sara"}, "model": {"name": "roberta-base"},
                      "dataset": {"name": "glue_mrpc", "monitor": "accuracy"}, "benchmark": {"name": "glue"}},
           "metrics": {"monitor": "accuracy", "selection": "best", "best": {"accuracy": 0.8},
                       "final": {"accuracy": 0.8}, "reported": {"accuracy": 0.8}, "best_epoch": 1}}
    (tmp_path / "sara-run").mkdir()
    (tmp_path / "sara-run" / "results.json").write_text(json.dumps(res))
    tables = build_tables(collect([tmp_path])[0])
    assert tables and all(sara_mod.UNVERIFIED_NOTE in t.caption() for t in tables)
    (tmp_path / "sara-run" / "results.json").write_text(json.dumps({**res, "method": "lora", "config": {
        **res["config"], "method": {"name": "lora"}}}))
    assert not any("sara" in t.caption() for t in build_tables(collect([tmp_path])[0]))
