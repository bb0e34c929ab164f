"""vLLM as the evaluation generator of ``kasa-eval RUN_DIR --generation-backend vllm`` (CUDA machines only).

The HF path (:class:`~kasa.training.causal_lm.CausalLMModule` under ``Trainer.validate``) generates with
``model.generate``; this one exports the run's weights merged (:func:`kasa.runs.export.export_loaded_run`, the
folder ``eval-<name>/export-merged/``), loads that folder into ``vllm.LLM``, feeds it the same prompt token ids
(:func:`~kasa.training.causal_lm.encode_prompt` with the datamodule's ``max_prompt_length``) and decodes greedily.
The texts are made as the HF path makes them (new tokens only, stripped; or prompt + continuation when the evaluator
says ``decode_prompt``), scored by the module's own evaluator and written to the same
``generations/epoch<N>.jsonl``.

What vLLM cannot reproduce is refused in one line before anything loads (:func:`check_vllm`): a classifier, a method
without a merged export, vLLM or CUDA missing, beam search, ``no_repeat_ngram_size``, ``trainer.limit_val_batches``
and MT-Bench (its turns are generated inside the evaluator, by HF ``generate``). ``repetition_penalty`` and
``max_new_tokens`` map one to one; HF's penalty also counts a batch's left padding, vLLM's does not, so with a penalty
rows that were padded may differ. Stopping: HF stops at the tokenizer's EOS only; vLLM also at the EOS ids of the
export's ``generation_config.json`` (the same id for most models).

Never run here on a real vLLM (no GPU): tests/test_eval_vllm.py checks the plumbing against a fake ``vllm`` module.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from kasa.errors import ConfigError, EvalError
from kasa.training.causal_lm import EvalItem, GenerationSettings, decode_generations, encode_prompt, write_generations

BACKENDS = ("hf", "vllm")
EXPORT_FORMAT = "merged"
# trainer.precision -> vLLM dtype (otherwise the dtype of the loaded weights, as the HF path computes in it)
_PRECISION_DTYPE = {"bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "bf16": "bfloat16",
                    "16-mixed": "float16", "16-true": "float16", "16": "float16"}


def check_vllm(cfg: DictConfig) -> None:
    """Raise :class:`EvalError` / :class:`ConfigError` (one line) when ``cfg``'s run cannot be evaluated with vLLM
    here; reads only the config, the registry and the environment (nothing loads)."""
    import torch

    from kasa.errors import MethodError
    from kasa.methods.export import check_format
    from kasa.tasks import get_task

    family = cfg.benchmark.get("family")
    if not get_task(family).causal_lm:
        raise EvalError(f"--generation-backend vllm generates text; this run trained a classifier "
                        f"(benchmark.family={family})")
    try:
        check_format(cfg.method.name, EXPORT_FORMAT, cfg.method)
    except MethodError as exc:
        raise EvalError(f"--generation-backend vllm serves the merged export: {exc}") from None
    if importlib.util.find_spec("vllm") is None:
        raise EvalError("--generation-backend vllm: vLLM is not installed (pip install vllm on a CUDA machine; "
                        "or --generation-backend hf)")
    if not torch.cuda.is_available():
        raise EvalError("--generation-backend vllm needs a CUDA GPU and torch sees none; use --generation-backend hf")
    gen = cfg.benchmark.get("generation") or {}
    if int(gen.get("num_beams", 1)) != 1:
        raise ConfigError(f"benchmark.generation.num_beams={gen.get('num_beams')}: the vllm backend decodes greedily "
                          "only (num_beams=1); use --generation-backend hf for beam search")
    if int(gen.get("no_repeat_ngram_size", 0) or 0) != 0:
        raise ConfigError(f"benchmark.generation.no_repeat_ngram_size={gen.get('no_repeat_ngram_size')}: vLLM has no "
                          "such setting; set it to 0 or use --generation-backend hf")
    limit = cfg.get("trainer", {}).get("limit_val_batches")
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):  # an int counts batches
        raise ConfigError(f"trainer.limit_val_batches={limit}: the vllm backend generates for every dev prompt; "
                          "use dataset.max_eval to score fewer")
    mtbench = cfg.benchmark.get("mtbench")  # only a family whose evaluator generates MT-Bench turns has it
    if mtbench is not None and mtbench.get("enabled", True):
        raise ConfigError("benchmark.mtbench.enabled=true: MT-Bench's turns are generated inside the evaluator by HF "
                          "generate, not by vLLM; pass benchmark.mtbench.enabled=false (or --generation-backend hf)")


def sampling_kwargs(gen: GenerationSettings) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments of greedy ``gen`` (what :func:`check_vllm` lets through)."""
    return {"temperature": 0.0, "max_tokens": int(gen.max_new_tokens),
            "repetition_penalty": float(gen.repetition_penalty)}


def prompt_token_ids(tokenizer: Any, items: Sequence[EvalItem], max_prompt_length: int | None) -> list[list[int]]:
    """Each item's prompt ids exactly as the HF path's datamodule makes them (:func:`encode_prompt`)."""
    return [encode_prompt(tokenizer, it.prompt, max_prompt_length) for it in items]


def texts_from_outputs(tokenizer: Any, prompts: Sequence[Sequence[int]], outputs: Sequence[Any],
                       decode_prompt: bool) -> list[str]:
    """The evaluator's strings from vLLM's ``RequestOutput`` list (``outputs[i].outputs[0].token_ids``), decoded by
    the run's tokenizer by :func:`~kasa.training.causal_lm.decode_generations`, the HF path's rule."""
    new = [list(out.outputs[0].token_ids) for out in outputs]
    full = [list(ids) + n for ids, n in zip(prompts, new, strict=True)]
    return decode_generations(tokenizer, full, new, decode_prompt)


def vllm_dtype(cfg: DictConfig, model: Any) -> str:
    """The dtype vLLM computes in: ``trainer.precision``'s half type, else the loaded weights' dtype."""
    precision = str(cfg.get("trainer", {}).get("precision", ""))
    if precision in _PRECISION_DTYPE:
        return _PRECISION_DTYPE[precision]
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def vllm_dev_metrics(run: Any, name: str, config_file: str | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Score ``run`` (a :class:`~kasa.runs.load.LoadedRun` built with data) on its dev set with vLLM; returns
    ``(metrics, what eval-<name>.json adds)``, as :func:`kasa.runs.evaluate._dev_metrics` does for the HF path."""
    import vllm

    from kasa.runs.export import export_loaded_run

    module, dm = run.bundle.module, run.bundle.datamodule
    gen: GenerationSettings = module.generation
    items = list(dm.eval_items)
    prompts = prompt_token_ids(run.tokenizer, items, dm.max_prompt_length)
    out_dir = Path(run.run_dir) / f"eval-{name}"
    dequantize = bool(run.cfg.model.get("quantization"))
    dtype = vllm_dtype(run.cfg, run.model)
    folder = export_loaded_run(run, EXPORT_FORMAT, out_dir / f"export-{EXPORT_FORMAT}", config_file=config_file,
                               overwrite=True, dequantize=dequantize)
    llm_args = {"model": str(folder), "tokenizer": str(folder), "seed": int(run.cfg.get("seed", 0)), "dtype": dtype,
                "max_model_len": max(len(p) for p in prompts) + int(gen.max_new_tokens)}
    llm = vllm.LLM(**llm_args)
    sampling = sampling_kwargs(gen)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], vllm.SamplingParams(**sampling))
    texts = texts_from_outputs(run.tokenizer, prompts, outputs, module.evaluator.decode_prompt)
    write_generations(out_dir / "generations" / module.validation_file(), items, texts)
    metrics = {k: float(v) for k, v in module.evaluator(items, texts, module, out_dir).items()}
    module.results_extra["evaluation"] = module.evaluator.info
    extra = {k: v for k, v in module.results_extra.items() if k != "lm_eval"}
    extra.update(generation=asdict(gen), generation_backend="vllm",
                 vllm={"version": getattr(vllm, "__version__", None), "llm": llm_args, "sampling": sampling},
                 export={"format": EXPORT_FORMAT, "folder": str(folder), "dequantized": dequantize})
    return metrics, extra


__all__ = ["BACKENDS", "check_vllm", "prompt_token_ids", "sampling_kwargs", "texts_from_outputs",
           "vllm_dev_metrics", "vllm_dtype"]
