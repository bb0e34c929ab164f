"""Every registered method has conf/method/<name>.yaml holding exactly its dataclass defaults."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from kasa.methods import REGISTRY, build_method
from kasa.train import CONF_DIR


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_yaml_equals_dataclass_defaults(name):
    path = CONF_DIR / "method" / f"{name}.yaml"
    assert path.exists(), f"missing {path}"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == name
    fields = {f.name: f for f in dataclasses.fields(REGISTRY[name].config_cls)}
    assert set(cfg) == set(fields), f"{name}: yaml keys differ from the config dataclass"
    for key, value in cfg.items():
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert value == default, f"{name}.{key}: yaml {value!r} != default {default!r}"
    build_method(name, **cfg)  # and the file builds


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
            assert (CONF_DIR / group / f"{option}.yaml").exists()
