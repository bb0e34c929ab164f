"""kasa: KaSA, its 14 PEFT baselines and full fine-tuning on one Hydra + Lightning training loop."""

import logging as _logging


class _NoMissingKernelLibs(_logging.Filter):
    """torchao's import logs one warning per CUDA kernel library a CPU-only torch cannot load; transformers may
    import torchao before kasa does, so the filter sits on its logger from the start. Other torchao logs pass."""

    def filter(self, record: _logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Failed to load") and ".so" in msg)


_logging.getLogger("torchao").addFilter(_NoMissingKernelLibs())

__version__ = "0.1.0"
