"""The LightningModules every method trains with (classification, causal LM), their optimiser and callbacks."""

from .base import PeftModule
from .callbacks import StepSeed
from .causal_lm import CausalLMModule, CompletionDataModule, CompletionExample, EvalItem, Evaluator, GenerationSettings
from .classification import ClassificationModule, build_metrics, metric_key
from .optim import OptimConfig, build_optimizer

__all__ = ["CausalLMModule", "ClassificationModule", "CompletionDataModule", "CompletionExample", "EvalItem",
           "Evaluator", "GenerationSettings", "OptimConfig", "PeftModule", "StepSeed", "build_metrics",
           "build_optimizer", "metric_key"]
