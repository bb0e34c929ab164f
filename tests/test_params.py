"""`python -m kasa.params`: trainable counts on meta models against the paper / reference logs."""

from __future__ import annotations

import pytest

from kasa.methods import REGISTRY
from kasa.methods.base import count_only, is_count_only
from kasa.params import count, main


@pytest.mark.parametrize("model,expected", [("roberta-base", 295_104), ("roberta-large", 786_816),
                                            ("deberta-v3-base", 295_104)])
def test_kasa_matches_reference_logs(model, expected):
    assert count("kasa", model) == expected


@pytest.mark.parametrize("model,n_modules", [("roberta-base", 24), ("roberta-large", 48)])
def test_lora_is_kasa_minus_the_diagonal(model, n_modules):
    # query and value of every layer; KaSA adds an r-vector per module
    assert count("lora", model) == count("kasa", model) - 8 * n_modules


def test_set_overrides_and_heads():
    assert count("lora", "roberta-base", {"r": 16}) == 2 * 294_912
    # the classification head of RoBERTa: dense 768x768 + bias, out_proj 768x2 + bias
    assert count("lora", "roberta-base", include_heads=True) == 294_912 + 768 * 768 + 768 + 768 * 2 + 2


def test_count_only_flag():
    assert not is_count_only()
    with count_only():
        assert is_count_only()
    assert not is_count_only()


def test_command_prints_every_registered_method(capsys):
    rc = main(["--models", "roberta-base"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert set(REGISTRY) <= rows
    assert "295,104 (paper: ok)" in out and "MISMATCH" not in out
