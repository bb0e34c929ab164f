"""experiments/truncation/smollm2_where.py's core on a tiny random Llama: the removals it measures are the ones
it claims (the paper's t smallest triplets, random directions with the same singular values), and every
configuration is undone exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("smollm2_where",
                                              REPO / "experiments" / "truncation" / "smollm2_where.py")
where = importlib.util.module_from_spec(spec)
spec.loader.exec_module(where)

T = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_llama()


def test_targets_are_the_llama_preset_in_every_layer(model):
    names = where.target_names(model)
    assert len(names) == 2 * len(where.MODULES)
    assert {where.module_of(n) for n in names} == set(where.MODULES)
    assert {where.layer_of(n) for n in names} == {0, 1}
    assert len(where.select(where.smallest_removals(model, names, T), module="v_proj")) == 2


def test_apply_then_restore_gives_back_the_exact_weights(model):
    names = where.target_names(model)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    surgery = where.Surgery(model, names)
    paper = where.smallest_removals(model, names, T)
    for removals in (paper, where.random_removals(paper, 0), where.select(paper, layer=1)):
        with surgery.removed(removals):
            assert all(not torch.equal(model.get_submodule(n).weight, before[n]) for n in removals)
        for n in names:
            assert torch.equal(model.get_submodule(n).weight, before[n]), n


def test_the_removed_part_is_the_float64_t_smallest_triplets(model):
    names = where.target_names(model)
    paper = where.smallest_removals(model, names, T)
    surgery = where.Surgery(model, names)
    for n in names:
        w64 = model.get_submodule(n).weight.detach().double()
        U, S, Vh = torch.linalg.svd(w64, full_matrices=False)
        k = S.shape[0]
        ref = U[:, k - T:] @ torch.diag(S[k - T:]) @ Vh[k - T:]
        part = paper[n].us @ paper[n].vh
        assert part.norm() == pytest.approx(float(S[k - T:].pow(2).sum().sqrt()), rel=1e-10)
        assert float((part - ref).norm() / ref.norm()) < 1e-10
        assert torch.allclose(paper[n].s, S[k - T:], rtol=1e-12, atol=0)
    with surgery.removed(paper):
        for n in names:  # the model holds W - part, rounded once to the weight's dtype
            w = model.get_submodule(n).weight
            expect = (surgery.original[n].double() - paper[n].us @ paper[n].vh).to(w.dtype)
            assert torch.equal(w, expect), n


def test_the_random_control_has_exactly_the_removed_singular_values(model):
    names = where.target_names(model)
    paper = where.smallest_removals(model, names, T)
    rand = where.random_removals(paper, seed=0)
    assert not torch.equal(rand[names[0]].us, where.random_removals(paper, seed=1)[names[0]].us)
    for n in names:
        part = rand[n].us @ rand[n].vh
        sv = torch.linalg.svdvals(part)
        assert torch.allclose(sv[:T], paper[n].s, rtol=1e-10, atol=0)  # both descending
        assert float(sv[T:].max()) < 1e-12 * float(sv[0])  # rank t
        # not the paper's own directions: a random t-dim subspace of a >= 32-dim space misses them
        overlap = (paper[n].vh @ rand[n].vh.T).norm() / T ** 0.5
        assert overlap < 0.9


def test_token_spread_shares_add_up_and_count_rising_tokens():
    before = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([2.0, 2.0])]
    after = [torch.tensor([5.0, 1.0, 0.5, 1.0]), torch.tensor([2.0, 3.0])]
    sp = where.token_spread(before, after)
    assert sp["tokens"] == 6 and sp["rising"] == pytest.approx(2 / 6)
    # mean-loss change: (3.5 / 4 + 1 / 2) / 2; position 0 carries (4 / 4) / 2 of it
    assert sp["increase"] == pytest.approx((3.5 / 4 + 0.5) / 2)
    shares = {b["positions"]: b["share"] for b in sp["buckets"]}
    assert shares["0"] == pytest.approx(0.5 / sp["increase"])
    assert sum(shares.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same sentences"):
        where.token_spread(before, after[:1])


def test_narrowing_keeps_the_smallest_triplets_and_reference_spares_wide_weights(model):
    names = where.target_names(model)
    paper = where.smallest_removals(model, names, T)
    one, direct = where.narrow(paper, 1), where.smallest_removals(model, names, 1)
    for n in names:
        assert torch.allclose(one[n].us @ one[n].vh, direct[n].us @ direct[n].vh, rtol=0, atol=1e-12)
    ranks = where.reference_ranks(model, names, T)  # tiny llama: q 32x32, k/v 16x32, up 48x32, down 32x48
    assert {where.module_of(n): k for n, k in ranks.items()} == {"q_proj": T, "k_proj": 0, "v_proj": 0,
                                                                 "up_proj": T, "down_proj": 0}
    assert set(where.narrow(paper, ranks)) == {n for n in names if where.module_of(n) in ("q_proj", "up_proj")}
    with pytest.raises(ValueError, match="cannot narrow"):
        where.narrow(paper, T + 1)
