"""Method configs come from the method dataclasses alone (Hydra structured configs in the ConfigStore): every
registered method composes to exactly its dataclass defaults, values are typed when the config is composed,
and a yaml in conf/method/ holds only what differs from its dataclass."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from kasa.config import CONF_DIR
from kasa.config.schemas import SCHEMA_SUFFIX
from kasa.methods import REGISTRY, method_from_config


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _defaults(name: str) -> dict:
    out = {}
    for f in dataclasses.fields(REGISTRY[name].config_cls):
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_composes_to_its_dataclass_defaults(name):
    node = OmegaConf.to_container(_compose(f"method={name}").method, resolve=True)
    assert node.pop("name") == name
    yaml_path = CONF_DIR / "method" / f"{name}.yaml"
    preset = {}
    if yaml_path.exists():  # a preset named like the method: its own values over the dataclass's
        preset = {k: v for k, v in yaml.safe_load(yaml_path.read_text()).items() if k not in ("defaults", "name")}
    assert node == {**_defaults(name), **preset}
    method_from_config({"name": name, **node})  # and it builds


def test_method_yamls_hold_only_differences():
    """A file in conf/method/ is a preset: it extends a method (or its schema) and sets only values that differ."""
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        parents = [d for d in cfg.get("defaults", []) if d != "_self_"]
        assert parents, f"{path.name}: a method yaml must extend a method (defaults: [<name>, _self_])"
        base = str(parents[0]).removesuffix(SCHEMA_SUFFIX)
        assert base in REGISTRY, f"{path.name}: extends unknown method '{parents[0]}'"
        values = {k: v for k, v in cfg.items() if k not in ("defaults", "name")}
        same = {k for k, v in values.items() if _defaults(base).get(k, object()) == v}
        assert not same, f"{path.name}: {sorted(same)} repeat the dataclass defaults"


@pytest.mark.parametrize("override, message", [
    ("method.r=abc", "could not be converted to Integer"),
    ("method.alpha=abc", "could not be converted to Float"),
    ("method.bta=1", "Key 'bta' not in"),
    ("method.keep_removed=maybe", "is not a valid bool"),
])
def test_bad_method_values_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException) as exc:
        _compose("method=kasa", override)
    assert message in str(exc.value) + str(exc.value.__cause__)


def test_target_modules_take_a_list_or_a_string():
    assert list(_compose("method=lora", "method.target_modules=[query,value]").method.target_modules) == \
        ["query", "value"]
    assert _compose("method=lora", "method.target_modules=query").method.target_modules == "query"


def test_registry_has_all_sixteen_methods():
    expected = ("fft bitfit adapter_h adapter_p adapter_l adapter_d lora adalora dylora vera sara pissa milora "
                "dora corda kasa").split()
    assert sorted(REGISTRY) == sorted(expected)


def test_every_config_group_default_exists():
    train = yaml.safe_load((CONF_DIR / "train.yaml").read_text())
    for entry in train["defaults"]:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            if option is None:  # a group left empty by default (experiment)
                continue
            if group == "method":
                assert option in REGISTRY
            else:
                assert (CONF_DIR / group / f"{option}.yaml").exists()


@pytest.mark.parametrize("task", ["vader_movie5", "vader_tweets3", "vader_sst2"])
def test_adalora_minilm_schedule_fits_table1_runs(task):
    """The Table 1 AdaLoRA preset keeps its scripts' shape at that table's run length: full budget for the first
    ~15% of the steps, the target fixed for the last ~50%, a cubic decrease between."""
    cfg = _compose("experiment=table1_minilm", "method=adalora_minilm", f"dataset={task}")
    total = cfg.dataset.source_args.max_train // cfg.benchmark.batch_size * cfg.trainer.max_epochs
    assert total == 300
    method = method_from_config(OmegaConf.to_container(cfg.method, resolve=True))
    method._check_schedule(total)
    c = method.config
    assert 0.12 <= c.tinit / total <= 0.18 and 0.44 <= c.tfinal / total <= 0.52
    init_bgt, target_bgt = 144, 96  # 12 adapters (query, value in 6 blocks) at init_r 12 and target_r 8
    budgets = [method.budget_schedule(s, total, init_bgt, target_bgt)[0] for s in range(1, total + 1)]
    assert set(budgets[:c.tinit]) == {init_bgt} and budgets[c.tinit] < init_bgt
    assert set(budgets[total - c.tfinal:]) == {target_bgt}
    assert budgets == sorted(budgets, reverse=True)
    # the general preset (fractions of the run's length) is this schedule at 300 steps, bar deltaT
    scaled = method_from_config(OmegaConf.to_container(
        _compose("experiment=table1_minilm", "method=adalora_scaled", f"dataset={task}").method, resolve=True))
    assert scaled.schedule_steps(total) == (c.tinit, c.tfinal) and scaled.config.deltaT == 10
