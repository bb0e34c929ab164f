"""Shared-prefix generation (kasa.training.prefix_cache) against transformers' own generate on the same batch."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODELS

from kasa.training.causal_lm import pad_left
from kasa.training.prefix_cache import common_prefix_length, generate_with_shared_prefix


def _batch(prefix_len: int = 12, rest=(5, 9, 3)):
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(1, 100, (prefix_len,), generator=g)
    rows = [torch.cat([prefix, torch.randint(1, 100, (n,), generator=g)]).tolist() for n in rest]
    return pad_left(rows, 0)


def _forward_shapes(model) -> list:
    """Input shapes of every forward call (a hook: replacing ``forward`` would change the signature ``generate``
    inspects)."""
    shapes: list = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    return shapes


def test_common_prefix_length():
    t = torch.tensor
    assert common_prefix_length([t([1, 2, 3, 4]), t([1, 2, 5])]) == 2
    assert common_prefix_length([t([1, 2, 3]), t([1, 2, 3])]) == 2  # every row keeps one token to feed
    assert common_prefix_length([t([7, 2]), t([1, 2])]) == 0


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_same_tokens_as_plain_generate_and_the_prefix_runs_once(name):
    torch.manual_seed(0)
    model = TINY_MODELS[name]()
    ids, mask = _batch()
    kw = {"max_new_tokens": 6, "do_sample": False, "eos_token_id": None, "use_cache": True}
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, output_scores=True,
                             return_dict_in_generate=True, **kw)
        shapes = _forward_shapes(model)
        got = generate_with_shared_prefix(model, ids, mask, 0, **kw)
    assert shapes[:2] == [(1, 12), (3, 9)]  # the prefix once, then only each row's own tokens (padded to 9)
    top2 = torch.stack([s.topk(2, dim=-1).values for s in ref.scores])
    if (top2[..., 0] - top2[..., 1]).min() > 1e-4:  # no near-tie a float round-off could flip
        assert torch.equal(got, ref.sequences)
    assert got.shape == ref.sequences.shape and torch.equal(got[:, :ids.shape[1]], ids)


def test_beam_search_ngram_bans_and_short_prefixes_use_plain_generate():
    model = TINY_MODELS["llama"]()
    shapes = _forward_shapes(model)
    ids, mask = _batch()
    with torch.no_grad():
        generate_with_shared_prefix(model, ids, mask, 0, max_new_tokens=2, num_beams=2, do_sample=False)
        assert shapes[0] == (6, 21)  # 3 rows x 2 beams, the whole prompts (12 + 9)
        shapes.clear()
        generate_with_shared_prefix(model, ids, mask, 0, max_new_tokens=2, do_sample=False, no_repeat_ngram_size=3)
        assert shapes[0] == (3, 21)  # the pads between prefix and rest would split the prompt's n-grams
        shapes.clear()
        ids, mask = _batch(prefix_len=4)
        generate_with_shared_prefix(model, ids, mask, 0, max_new_tokens=2, do_sample=False)
        assert shapes[0] == (3, 13)  # 4 + 9
