"""The training loop's parts that no benchmark family owns: the LightningModule base (:mod:`.base`), the causal-LM
module and datamodule the generation families share (:mod:`.causal_lm`), the optimiser and schedules (:mod:`.optim`),
seeded samplers (:mod:`.samplers`), callbacks, loggers and the distributed strategy. A family's own module lives in
its folder under :mod:`kasa.tasks`; run folders, resume and checkpoints in :mod:`kasa.runs`."""

from kasa.training.base import PeftModule
from kasa.training.callbacks import StepSeed
from kasa.training.causal_lm import (
                                     CausalLMModule,
                                     CompletionDataModule,
                                     CompletionExample,
                                     EvalItem,
                                     Evaluator,
                                     GenerationSettings,
)
from kasa.training.optim import OptimConfig, build_optimizer

__all__ = ["CausalLMModule", "CompletionDataModule", "CompletionExample", "EvalItem", "Evaluator",
           "GenerationSettings", "OptimConfig", "PeftModule", "StepSeed", "build_optimizer"]
