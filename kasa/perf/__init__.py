"""Side-by-side cost of KaSA against LoRA, HF PEFT's LoRA/KaSA and the frozen model, in ONE process.

``python -m kasa.perf --quick`` (CPU, a few minutes), ``--full`` (GPU: 7B-shaped Llama built from its
config on the device, bf16), ``--tiny`` (seconds; what the tests run). Prints Markdown tables:

1. training step (forward + backward + AdamW step) of every method, median of interleaved repetitions
   (each repetition runs every method once, in a rotated order), and its ratio to the frozen floor
   (forward + backward to the inputs of the frozen model, no optimizer);
2. memory: on CUDA the peak allocated during a step; everywhere the bytes we can count honestly:
   trainable parameters + their gradients + AdamW state + adapter buffers + activations saved for
   backward (counted with ``torch.autograd.graph.saved_tensors_hooks``, frozen weights excluded);
3. merged inference (forward, no grad) against the base model;
4. the regulariser's forward + backward (paper form, reference form through r x r Grams, reference
   form built explicitly, HF PEFT's);
5. truncation of 7B-shaped weights: full SVD (float32, the previous default and HF PEFT's) against
   the fast path (``svd_method="auto"``), per weight, and an extrapolation to LLaMA-2 7B's targets;
6. every registry method (and HF PEFT's DoRA, PiSSA, AdaLoRA, VeRA) over the frozen floor, with its
   counted memory, one method at a time (``--skip-methods`` leaves it out);
7. Lightning's training step (``kasa.tasks.classification.module.ClassificationModule``) against a bare PyTorch loop.
8. ``--throughput`` (alone): non-padding tokens per second and padding share of padded, length-grouped and packed
   causal-LM batches of SmolLM2-135M on the commonsense training mix (``throughput``).

Modules: ``core`` (profiles, runner, timing), ``steps``, ``memory``, ``methods``, ``truncation``, ``throughput``,
``report`` (``run``: the whole report) and ``__main__`` (the command line).
"""

from kasa.perf.report import run

__all__ = ["run"]
