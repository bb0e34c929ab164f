"""The value checks of a run configuration that need no model weights, no data and no other part of kasa: bad
input fails in a second. :func:`kasa.config.validate.validate` runs them first (:func:`check_config`), in order:

1. interpolations resolve (``${study.lr.${method.name}}`` with a method the study has no lr for);
2. :data:`RULES`, a table of scalar settings (``seed``, ``trainer.max_epochs``, ``benchmark.batch_size``,
   ``dataset.max_length``, ...): each a dotted key, what is allowed, and a predicate (a config section with its
   own schema checks itself: ``benchmark.optim`` in :class:`kasa.training.optim.OptimConfig`);
3. folders a run writes to (``sweep_dir``, ``$KASA_CACHE``) and a local ``model.name_or_path``;
4. the method's hyper-parameters against the types of its config dataclass (``method.alpha=abc``) and
   ranges every method shares (``dropout`` in [0, 1));
5. the quantisation settings against the method and the machine.

Every failure is one line naming the key, the value and what is allowed (:class:`~kasa.errors.ConfigError`, or
:class:`~kasa.errors.MethodError` for ``method.*``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import numbers
import os
import socket
import tempfile
import types
import typing
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kasa.errors import ConfigError  # noqa: F401  (re-exported)
from kasa.models.loader import looks_local_path

SELECTIONS = ("best", "last")
_UNSET = object()


# ------------------------------------------------------------------------------------------------------
# the table of scalar settings

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= lo


def _number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not _is_number(v) or v != v:  # NaN fails every comparison
            return False
        above = v > lo if lo_open else v >= lo
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below
    return ok


@dataclass(frozen=True)
class Rule:
    """A setting, what it allows (for the message) and a predicate on its value."""

    key: str
    allowed: str
    ok: Callable[[Any], bool]
    optional: bool = False  # null (or absent) passes
    when: Callable[[DictConfig], bool] = lambda cfg: True  # the rule applies only where this holds


def _finite_steps(cfg: DictConfig) -> bool:
    """``trainer.max_steps`` > 0 bounds the run on its own; else ``max_epochs`` must."""
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    return not (_is_int(steps) and steps > 0)


RULES: tuple[Rule, ...] = (
    Rule("seed", "an integer >= 0", _int_at_least(0)),
    Rule("trainer.max_epochs", "an integer >= 0 (0: no training, the model as built is scored once, e.g. the "
         "base model's zero-shot row with method=fft; the learning-rate schedule needs a finite run: Lightning's -1, "
         "no limit, works only with trainer.max_steps > 0)", _int_at_least(0), when=_finite_steps),
    Rule("trainer.max_steps", "-1 (no step limit) or an integer >= 1", lambda v: v == -1 or _int_at_least(1)(v),
         optional=True),
    Rule("trainer.accumulate_grad_batches", "an integer >= 1", _int_at_least(1), optional=True),
    Rule("trainer.val_check_interval", "null (once per epoch), an integer >= 1 (every N training batches) or a "
         "float in (0, 1] (that fraction of an epoch)",
         lambda v: _int_at_least(1)(v) or (isinstance(v, float) and 0 < v <= 1), optional=True),
    Rule("checkpoint.every_n_train_steps", "null (last.ckpt at each validation only) or an integer >= 1 "
         "(also every N optimiser steps)", _int_at_least(1), optional=True),
    Rule("benchmark.batch_size", "an integer >= 1", _int_at_least(1)),
    Rule("benchmark.eval_batch_size", "an integer >= 1", _int_at_least(1), optional=True),
    Rule("benchmark.max_length", "an integer >= 1", _int_at_least(1), optional=True),
    Rule("benchmark.selection", f"one of {', '.join(SELECTIONS)}", lambda v: v in SELECTIONS, optional=True),
    Rule("dataset.max_length", "an integer >= 1 (tokens kept per example)", _int_at_least(1), optional=True),
)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def first_problem(obj: Any, section: str, rules: Sequence[tuple[str, str, Callable[[Any], bool]]]) -> str | None:
    """The first of ``rules`` (attribute, what is allowed, predicate) that ``obj`` fails, as ``<section>.<key>=<value>
    is not allowed; use <allowed>``: how the section dataclasses (optim, early_stopping, judge) check themselves."""
    for key, allowed, ok in rules:
        value = getattr(obj, key)
        if not ok(value):
            return f"{section}.{key}={_fmt(value)} is not allowed; use {allowed}"
    return None


def check_rules(cfg: DictConfig, rules: tuple[Rule, ...] = RULES) -> None:
    """Every rule whose key is set: its value must pass, else one line naming key, value and what is allowed."""
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_UNSET)
        if value is _UNSET or (value is None and rule.optional) or not rule.when(cfg):
            continue
        if not rule.ok(value):
            raise ConfigError(f"{rule.key}={_fmt(value)} is not allowed; use {rule.allowed}")


# ------------------------------------------------------------------------------------------------------
# folders and paths

def folder_problem(path: str | Path) -> str | None:
    """Why a run could not create or write into the folder ``path`` (``None``: it can).

    Probes with a temporary file in the folder, or in its nearest existing parent when it does not exist
    yet (the run creates it), so permissions, read-only mounts and files in the way are all caught.
    """
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"'{probe}' is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"'{probe}' is not writable ({exc.strerror or errno.errorcode.get(exc.errno, exc)})"
    return None


def check_paths(cfg: DictConfig) -> None:
    """Folders the run writes to are writable; a local model path exists."""
    sweep = OmegaConf.select(cfg, "sweep_dir", default=None)
    if sweep:
        why = folder_problem(sweep)
        if why:
            raise ConfigError(f"sweep_dir='{sweep}' cannot hold the run folders: {why}")
    cache = os.environ.get("KASA_CACHE")
    if cache:
        why = folder_problem(cache)
        if why:
            raise ConfigError(f"KASA_CACHE='{cache}' cannot be used: {why}; kasa writes prepared assets and "
                              "caches there: point KASA_CACHE at a writable folder")
    name = OmegaConf.select(cfg, "model.name_or_path", default=None)
    if isinstance(name, str) and looks_local_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(f"model.name_or_path='{name}': the path does not exist (give a local checkpoint folder "
                          "or a hub id such as FacebookAI/roberta-base)")


# ------------------------------------------------------------------------------------------------------
# external services

def probe_url(url: str, timeout: float = 3.0) -> str | None:
    """Why ``url``'s host does not accept a TCP connection within ``timeout`` seconds (``None``: it does).

    Only the connection is tried (no request, no key sent): enough to tell a dead endpoint in seconds
    from one that answers, without waiting for an HTTP client's retries and long timeouts.
    """
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return f"'{url}' is not a URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{port} unreachable ({exc.strerror or exc})"


# ------------------------------------------------------------------------------------------------------
# method hyper-parameters

def conforms(value: Any, hint: Any) -> bool:
    """Whether a config value fits a dataclass field's type (``float`` takes ints, ``bool`` is not a number)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is float:
        return _is_number(value)
    if hint is int:
        return _is_int(value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this check does not understand: the method's own validate decides


def _type_name(hint: Any) -> str:
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


# Ranges shared by every method that has the field (the method's own validate checks the rest).
FIELD_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "dropout": ("a probability in [0, 1)", _number(0, 1)),
}


def check_method(cfg: DictConfig) -> None:
    """``method.*`` values against the method's config dataclass: types, then :data:`FIELD_RANGES`."""
    from kasa.methods import REGISTRY, MethodError

    name = OmegaConf.select(cfg, "method.name", default=None)
    cls = REGISTRY.get(name)
    if cls is None:
        return  # validate() names unknown methods
    hints = typing.get_type_hints(cls.config_cls)
    values = OmegaConf.to_container(cfg.method, resolve=True)
    for f in dataclasses.fields(cls.config_cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if not conforms(value, hints[f.name]):
            raise MethodError(f"method.{f.name}={_fmt(value)} is not allowed; {name} takes "
                              f"{_type_name(hints[f.name])} for {f.name}")
        rng = FIELD_RANGES.get(f.name)
        if rng and value is not None and not rng[1](value):
            raise MethodError(f"method.{f.name}={_fmt(value)} is not allowed; use {rng[0]}")


def check_quantization_cfg(cfg: DictConfig) -> None:
    """``model.quantization`` / ``model.quantization_backend``: known values, a backend that can run here (CUDA for
    bitsandbytes, the package installed), and a method that can train on a quantised base (not FFT)."""
    from kasa.errors import QuantizationError
    from kasa.methods import REGISTRY
    from kasa.models.quantize import check_quantization, resolve_backend

    scheme = OmegaConf.select(cfg, "model.quantization", default=None)
    backend = OmegaConf.select(cfg, "model.quantization_backend", default="auto")
    try:
        check_quantization(scheme, backend)
        if scheme is None:
            return
        resolve_backend(scheme, backend)
    except QuantizationError as exc:
        raise ConfigError(str(exc)) from None
    cls = REGISTRY.get(OmegaConf.select(cfg, "method.name", default=None))
    if cls is not None and cls.trains_base_weights:
        raise ConfigError(f"model.quantization={scheme}: method={cls.name} trains the base model's own weights, which "
                          "a quantised base cannot update; use model.quantization=null")
    if str(OmegaConf.select(cfg, "trainer.precision", default="") or "") in ("bf16-true", "16-true"):
        raise ConfigError(f"model.quantization={scheme} with trainer.precision={cfg.trainer.precision}: Lightning's "
                          "*-true precisions cast every parameter, the quantised weights too; use model.dtype and "
                          "trainer.precision=32-true or bf16-mixed")


# ------------------------------------------------------------------------------------------------------
# backbone architecture vs benchmark family

def model_config_json(name_or_path: str, revision: str | None = None) -> dict[str, Any] | None:
    """The checkpoint's ``config.json`` from a local folder, an offline alias or the local hub cache.

    Never downloads and never reads weights; ``None`` when the file is not at hand (the loader decides).
    """
    from kasa.models import resolve_path

    try:
        path = Path(resolve_path(name_or_path))
    except Exception:  # an alias whose package is missing: the loader names the fix
        return None
    file = path / "config.json"
    if not file.is_file() and not looks_local_path(name_or_path):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
            file = Path(cached) if isinstance(cached, str) else file
        except Exception:
            return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def is_causal_lm(config: dict[str, Any]) -> bool | None:
    """From ``architectures`` (``*ForCausalLM``, ``*LMHeadModel``); ``None`` when the file names none."""
    archs = config.get("architectures") or []
    if not archs:
        return None
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


# ------------------------------------------------------------------------------------------------------

def check_resolves(cfg: DictConfig) -> None:
    """Every interpolation resolves (one line naming the key instead of OmegaConf's multi-line report)."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key + ': ' if key else ''}{first}") from None


def check_config(cfg: DictConfig) -> None:
    """Everything above that needs only the config, cheapest first (the method registry last but one)."""
    check_resolves(cfg)
    check_rules(cfg)
    check_paths(cfg)
    check_method(cfg)
    check_quantization_cfg(cfg)


