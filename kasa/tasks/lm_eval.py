"""lm-evaluation-harness (the optional extra ``lm_eval``) on an in-memory kasa model, through its ``HFLM`` wrapper.

:func:`run_lm_eval` scores any causal LM (merged for the evaluation when the method can merge); ``kasa-eval RUN_DIR
--lm-eval TASKS`` calls it on a run's checkpoint, and ``benchmark.lm_eval.tasks=[...]`` on the trained model at the
end of ``kasa-train`` (:class:`LmEvalCallback`: the reported checkpoint, rank 0, results in ``results.json`` under
``lm_eval`` and in the W&B summary as ``lm_eval/<task>/<metric>``). Your own tasks: a folder of lm_eval task YAMLs
(``include_path``), e.g. a local JSON file with ``dataset_path: json``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from kasa.errors import LmEvalError  # noqa: F401  (re-exported)


@dataclass
class LmEvalSettings:
    """``benchmark.lm_eval`` of the causal-LM families: lm-evaluation-harness after training (off without tasks)."""

    tasks: Any = None  # e.g. [arc_easy, hellaswag] or "arc_easy,hellaswag"; null: off
    num_fewshot: int | None = None
    limit: float | None = None  # examples per task (a fraction if < 1); null: all
    batch_size: int = 8
    include_path: str | None = None  # a folder of your own lm_eval task YAMLs


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def require_lm_eval() -> None:
    if not lm_eval_available():
        raise LmEvalError("lm-evaluation-harness is not installed: pip install 'kasa[lm_eval]' (lm-eval>=0.4.13)")


def parse_tasks(tasks: Any) -> list[str]:
    """A task list from ``"a,b"`` or a list."""
    if tasks is None:
        return []
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    return [str(t).strip() for t in items if str(t).strip()]


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str], *, method: Any = None, num_fewshot: int | None = None,
                limit: int | float | None = None, batch_size: int = 8, include_path: str | list[str] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """lm-evaluation-harness ``tasks`` on an in-memory causal LM through ``HFLM``; JSON-able results.

    With ``method`` the adapter is merged for the evaluation (plain inference speed) and unmerged afterwards;
    methods that cannot merge (bottleneck adapters) are evaluated as they are.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kasa.methods import MethodError

    merged = False
    if method is not None:
        try:
            method.merge(model, safe=True)
            merged = True
        except MethodError:
            pass
    was_training = model.training
    model.eval()
    try:
        device = str(next(model.parameters()).device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        manager = _task_manager(TaskManager, tasks, include_path)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise LmEvalError(f"lm_eval task(s) {unknown} are unknown (add your own with include_path or "
                              "--lm-eval-include)")
        out = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                              log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    finally:
        if merged:
            method.unmerge(model)
        model.train(was_training)
    keep = ("results", "groups", "n-shot", "n-samples", "versions", "higher_is_better")
    res = {k: out[k] for k in keep if k in out}
    res["settings"] = {"tasks": list(tasks), "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
                       "include_path": include_path, "merged": merged}
    return json.loads(json.dumps(res, default=str))


def _task_manager(cls: Any, tasks: Sequence[str], include_path: Any) -> Any:
    """Only your own task folder when it has every task asked for: indexing lm_eval's thousands of built-in task
    files takes half a minute."""
    if include_path:
        own = cls(include_path=include_path, include_defaults=False)
        if all(t in own.all_tasks for t in tasks):
            return own
        return cls(include_path=include_path)
    return cls()


def lm_eval_summary(res: dict[str, Any]) -> dict[str, float]:
    """``{"lm_eval/<task>/<metric>": value}`` for the numeric results (W&B summary keys)."""
    out = {}
    for task, metrics in (res.get("results") or {}).items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k:
                out[f"lm_eval/{task}/{k.split(',')[0]}"] = float(v)
    return out


def lm_eval_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """``benchmark.lm_eval`` when it names tasks, else None; a classifier or a missing extra fail in one line."""
    node = (cfg.get("benchmark") or {}).get("lm_eval") or {}
    try:
        LmEvalSettings(**node)
    except TypeError as exc:  # a key the section does not have
        raise LmEvalError(f"benchmark.lm_eval: {exc}".replace("LmEvalSettings.__init__() ", "")) from None
    tasks = parse_tasks(node.get("tasks"))
    if not tasks:
        return None
    from kasa.tasks import get_task

    if not get_task(cfg.benchmark.get("family")).causal_lm:
        raise LmEvalError("benchmark.lm_eval.tasks: lm-evaluation-harness scores causal LMs; this run trains a "
                          "classifier")
    require_lm_eval()
    return {"tasks": tasks, "num_fewshot": node.get("num_fewshot"), "limit": node.get("limit"),
            "batch_size": int(node.get("batch_size") or 8), "include_path": node.get("include_path")}


try:
    import lightning as L

    _Callback = L.Callback
except ImportError:  # pragma: no cover
    _Callback = object


class LmEvalCallback(_Callback):
    """``benchmark.lm_eval.tasks`` after training: the reported checkpoint (``benchmark.selection``) is scored with
    lm-evaluation-harness on rank 0; results go to ``results.json`` (``lm_eval``) and the W&B summary."""

    def __init__(self, settings: dict[str, Any], selection: str = "best", seed: int = 0):
        self.settings, self.selection, self.seed = settings, selection, seed

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from kasa.runs.checkpoints import adapter_state
        from kasa.runs.files import load_torch

        model, method = pl_module.model, pl_module.method
        history = getattr(pl_module, "history", None) or [{}]
        used = {"checkpoint": "last", "epoch": history[-1].get("epoch")}
        best = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) and cb.best_model_path]
        if self.selection == "best" and best and Path(best[0].best_model_path).is_file():
            path = Path(best[0].best_model_path)
            ckpt = load_torch(path)
            method.load_adapter_state_dict(model, adapter_state(ckpt, path))
            used = {"checkpoint": "best", "epoch": ckpt.get("epoch")}
        res = run_lm_eval(model, pl_module.tokenizer, self.settings["tasks"], method=method, seed=self.seed,
                          **{k: v for k, v in self.settings.items() if k != "tasks"})
        res.update(used)
        pl_module.results_extra["lm_eval"] = res
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                try:  # a summary must never cost a run
                    lg.experiment.summary.update(lm_eval_summary(res))
                except Exception as exc:  # noqa: BLE001
                    print(f"[kasa] lm_eval W&B summary skipped: {exc}", file=sys.stderr)


def lm_eval_callback(cfg: DictConfig) -> LmEvalCallback | None:
    """The callback ``kasa-train`` adds when ``benchmark.lm_eval.tasks`` is set (checked before any model loads)."""
    settings = lm_eval_settings(cfg)
    if settings is None:
        return None
    return LmEvalCallback(settings, selection=str(cfg.benchmark.get("selection", "best")), seed=int(cfg.get("seed", 0)))


__all__ = ["LmEvalCallback", "LmEvalError", "lm_eval_available", "lm_eval_callback", "lm_eval_summary",
           "parse_tasks", "require_lm_eval", "run_lm_eval"]
