"""MiLoRA (Wang et al., 2024, arXiv 2406.09044): LoRA initialised from the r MINOR singular triplets.

Same construction as PiSSA (:mod:`kasa.methods.pissa`) with the smallest singular values instead of the
largest: ``A = sqrt(S_min / scaling) V_min^T``, ``B = U_min sqrt(S_min / scaling)``, base replaced by the
residual ``W - scaling * B A`` (the principal part), so the model's output is unchanged at init. The minor
triplets need the full SVD (randomized SVD only approximates the top of the spectrum).

``alpha`` defaults to ``r`` (scaling 1), as the authors' ``svd_init.py`` builds its LoRA config
(``lora_alpha = svd_rank`` for both of its hyper-parameter sets); pass a number for another scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pissa import SvdInitConfig, SvdInitMethod
from .registry import register


@dataclass
class MiloraConfig(SvdInitConfig):
    alpha: float | None = None  # None: alpha = r, at every rank (the authors' svd_init.py sets lora_alpha = rank)
    dropout: float = 0.05  # the authors' LLM-Adapters setting (svd_init.py; QLoRA setting: 0.1)


@register("milora")
class Milora(SvdInitMethod):
    """MiLoRA: minor singular components init, residual base."""

    config_cls = MiloraConfig
    paper_order = 13
    export_formats = ("lora", "merged")
    peft_type = None
    loraplus_b_params = ("lora_B",)
    components = "minor"
