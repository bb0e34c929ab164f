"""kasa: KaSA, its 14 PEFT baselines and full fine-tuning on one Hydra + Lightning training loop."""

__version__ = "0.1.0"
