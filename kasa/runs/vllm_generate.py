"""``benchmark.generation.backend=vllm``: evaluation generation with vLLM from a run's exported weights (CUDA only).

vLLM serves a plain transformers checkpoint, so the trained model is first written by
:func:`kasa.runs.export.export_model`: ``merged`` (the adapter folded into the base: any mergeable method) or ``lora``
(a PEFT LoRA folder on the original base: vLLM's ``LoRARequest``). Greedy decoding as
:class:`~kasa.training.causal_lm.GenerationSettings` asks (``temperature=0``, ``max_tokens``, ``repetition_penalty``);
beam search is not offered here. :func:`kasa.config.validate.check_generation` refuses the backend in one line where
vLLM or CUDA is missing, so nothing here runs on the CPU machines (and no test runs it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def vllm_generate(model: Any, method: Any, tokenizer: Any, prompts: Sequence[str], settings: Any, work_dir: str | Path,
                  *, fmt: str = "merged", base_model: str | None = None, dtype: str = "auto",
                  gpu_memory_utilization: float = 0.85) -> list[str]:
    """Generate one continuation per prompt with vLLM from ``model`` (prepared by ``method`` and trained), exported to
    ``work_dir/<fmt>``; ``fmt="merged"`` merges ``model`` in place (export_model's rule), ``fmt="lora"`` needs
    ``base_model``, the original weights vLLM loads under the adapter."""
    from vllm import LLM, SamplingParams

    from kasa.runs.export import export_model

    if settings.num_beams > 1:
        raise ValueError("benchmark.generation.backend=vllm decodes greedily; set benchmark.generation.num_beams=1")
    out = Path(work_dir) / fmt
    export_model(model, method, fmt, out, base_model=base_model, task_type="CAUSAL_LM", tokenizer=tokenizer,
                 overwrite=True)
    params = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens,
                            repetition_penalty=settings.repetition_penalty)
    if fmt == "merged":
        llm = LLM(model=str(out), tokenizer=str(out), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
        results = llm.generate(list(prompts), params)
    else:
        from vllm.lora.request import LoRARequest

        if base_model is None:
            raise ValueError("fmt='lora' needs base_model: the weights vLLM loads under the adapter")
        rank = int(getattr(method.config, "r", 16))
        llm = LLM(model=base_model, dtype=dtype, enable_lora=True, max_lora_rank=max(8, rank),
                  gpu_memory_utilization=gpu_memory_utilization)
        results = llm.generate(list(prompts), params, lora_request=LoRARequest("kasa", 1, str(out)))
    return [r.outputs[0].text.strip() for r in results]  # vLLM returns them in prompt order
