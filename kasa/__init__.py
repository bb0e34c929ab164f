"""kasa: KaSA and 14 PEFT baselines on one Hydra + Lightning training loop."""

__version__ = "0.1.0"
