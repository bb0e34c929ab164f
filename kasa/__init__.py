"""kasa: KaSA, its 14 PEFT baselines and full fine-tuning on one Hydra + Lightning training loop."""

import logging as _logging


class _NoTorchaoImportNoise(_logging.Filter):
    """torchao's import (transformers imports it whenever it is installed) logs one warning per CUDA kernel library
    a CPU-only torch cannot load, and torch logs one per enum torchao registers with pytree; neither says anything
    to a kasa user. Only those records are dropped; every other log passes."""

    def filter(self, record: _logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ((msg.startswith("Failed to load") and ".so" in msg)
                    or "is an Enum subclass and is now natively supported" in msg)


_logging.getLogger("torchao").addFilter(_NoTorchaoImportNoise())
_logging.getLogger("torch.utils._pytree").addFilter(_NoTorchaoImportNoise())

__version__ = "0.1.0"
