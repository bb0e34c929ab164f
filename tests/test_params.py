"""`python -m kasa.params`: trainable counts on meta models against the paper / reference logs."""

from __future__ import annotations

import pytest

from kasa.cli.params import REFERENCE_COUNTS, count, main, resolve
from kasa.methods import REGISTRY


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
    from kasa.methods import build_method

    method = build_method("lora")
    assert not method.count_only
    with method.counting_only():
        assert method.count_only
    assert not method.count_only and not build_method("lora").count_only


def test_command_prints_every_registered_method(capsys):
    rc = main(["--models", "roberta-base"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert set(REGISTRY) <= rows
    assert "295,104 (paper: ok)" in out and "MISMATCH" not in out


PRESET_COUNTS = {k: v for k, v in REFERENCE_COUNTS.items() if k[0] not in REGISTRY}


def test_every_preset_extends_a_method_and_builds():
    from kasa.cli.params import presets, resolve
    from kasa.methods import build_method

    names = presets()
    assert {p for p, _ in PRESET_COUNTS} <= set(names) and names, names
    for name in names:
        registered, settings = resolve(name)
        assert registered in REGISTRY, name
        build_method(registered, **settings)


@pytest.mark.parametrize("preset,model", sorted(PRESET_COUNTS))
def test_presets_reproduce_the_published_counts(preset, model):
    # GLUE tables (RoBERTa-base Adpt^D 0.3M / 0.9M), E2E table (Adpt^L 0.37M / 11.09M, 0.88M / 23.00M), VeRA 0.061M
    assert count(preset, model) == PRESET_COUNTS[(preset, model)]


def test_defaults_differ_from_the_presets_where_the_papers_do():
    assert count("vera", "roberta-large") == 98_304  # r = 1024; the published 0.061M needs r = 256
    assert count("adapter_d", "roberta-base") == 7 * 74_544  # static, 5 of 12 blocks dropped, bottleneck 48


def test_adalora_cell_shows_the_final_budget(capsys):
    assert main(["--methods", "adalora", "--models", "roberta-base"]) == 0
    out = capsys.readouterr().out
    # init_r 12 / target_r 8 on 24 query/value modules of 768 x 768: a triplet costs 768 + 768 + 1
    assert f"{24 * 12 * 1537:,} (final: {24 * 8 * 1537:,})" in out and "final budget" in out


def _experiment(name: str):
    from hydra import compose, initialize_config_dir

    from kasa.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}"])


@pytest.mark.parametrize("name", ["glue_roberta_base", "glue_roberta_large", "e2e_gpt2"])
def test_paper_experiments_name_the_presets_of_their_published_counts(name):
    cfg = _experiment(name)
    presets = cfg.study.presets
    per_model = presets if cfg.study.get("per_model") else {cfg.model.name: presets}
    listed = set()
    for model, by_method in per_model.items():
        for method, names in by_method.items():
            for preset in names:
                assert resolve(preset)[0] == method
                assert count(preset, model) == REFERENCE_COUNTS[(preset, model)], (preset, model)
                listed.add((preset, model))
    assert listed  # and every preset with a published count is used by one of these experiments
    if name == "e2e_gpt2":
        assert {k for k in PRESET_COUNTS if k[0].startswith("adapter_l")} == listed
