"""Hyper-parameters of the methods: typed dataclasses holding every default once.

Each method's ``config_cls`` subclasses :class:`MethodConfig`; :func:`~kasa.methods.build_method` checks keyword
names against its fields and ``kasa.config.schemas`` turns the same dataclasses into Hydra's structured ``conf/method``
schemas, so a default lives in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MethodConfig:
    """Hyper-parameters every method shares; subclasses add their own fields.

    ``autocast_adapter_dtype`` (HF PEFT's name and default): on a float16/bfloat16 base, the method's own
    parameters are float32, inputs are cast to float32 inside the adapter and merges are computed in float32
    and cast once into the half-precision weight; ``False`` keeps them in the base's dtype. Methods that train
    the base's own parameters (FFT, BitFit) and the task head (``modules_to_save``) keep the base dtype.
    """

    target_modules: list[str] | str | None = None  # None: the architecture's preset
    modules_to_save: list[str] | None = None  # None: the task head preset (classifier/score/...)
    autocast_adapter_dtype: bool = True  # half-precision base: adapter parameters in float32 (False: base dtype)
    init_from: str | None = None  # a PEFT adapter folder to start from (see kasa.methods.method.check_init_from)


@dataclass
class LoraConfigBase(MethodConfig):
    """What every LoRA-shaped method (LoRA, DoRA, KaSA, PiSSA, ...) shares: rank, scaling, dropout."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False  # scaling alpha/sqrt(r) instead of alpha/r


__all__ = ["LoraConfigBase", "MethodConfig"]
