"""The LightningModules every method trains with (classification, causal LM), their optimiser and callbacks."""

from .callbacks import StepSeed
from .causal_lm import CausalLMModule, CompletionDataModule, CompletionExample, EvalItem, Evaluator, GenerationSettings
from .classification import PeftModule, build_metrics, metric_key
from .optim import OptimConfig, build_optimizer

__all__ = ["CausalLMModule", "CompletionDataModule", "CompletionExample", "EvalItem", "Evaluator", "GenerationSettings",
           "OptimConfig", "PeftModule", "StepSeed", "build_metrics", "build_optimizer", "metric_key"]
