"""Your own generation data as the records the generation families train on (``dataset=files_generation``).

A record is LLM-Adapters' / Alpaca's ``{"instruction", "input", "output"}`` (plus ``answer`` and ``task`` for the
commonsense family's evaluation). Rows come from a csv / tsv / json / jsonl / parquet file, a ``save_to_disk``
folder or a hub id (:func:`kasa.data.files.load_rows`), and their columns are mapped by name: ``prompt`` and
``completion`` (and optionally ``input``), or one chat column ``messages`` (``[{role, content}, ...]``; the first
user turn and the assistant reply after it, :func:`chat_record`). The template that wraps a prompt is the family's,
chosen by name (``benchmark.prompt_format`` for instruction, ``benchmark.prompt_style`` for commonsense).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kasa.data.files import require_column, require_rows, require_text
from kasa.errors import DatasetError


def chat_record(messages: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """The first user turn and the assistant reply after it as an Alpaca record, or None if there is no such pair.

    Leading system turns are put before the instruction (blank line between). Later turns are dropped: the
    synthetic sets and their test prompts are single-turn (LlamaDuo reads ``messages[0]`` / ``messages[1]``).
    """
    system: list[str] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), (m.get("content") or "").strip()
        if role == "system":
            system.append(content)
            continue
        if role != "user" or i + 1 >= len(messages) or messages[i + 1].get("role") != "assistant":
            return None
        answer = (messages[i + 1].get("content") or "").strip()
        if not content or not answer:
            return None
        return {"instruction": "\n\n".join([*system, content]), "input": "", "output": answer}
    return None


def generation_records(path: str, split: str = "train", prompt: str = "prompt", completion: str | None = "completion",
                       input: str | None = None, messages: str | None = None,
                       keep: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Records of one file (see the module docstring). ``completion=None``: evaluation rows that need no reference
    output; ``keep``: more record fields from columns (``{"answer": "label"}``), each required."""
    rows = require_rows(path, split)
    for field, column in (keep or {}).items():
        require_column(rows, path, column, field)
    if messages:
        require_column(rows, path, messages, "messages")
        out = []
        for r in rows:
            rec = chat_record(r[messages] or [])
            if rec is not None:
                out.append({**rec, **{f: r[c] for f, c in (keep or {}).items()}})
        if not out:
            raise DatasetError(f"data '{path}' column '{messages}' holds no user/assistant pair ({len(rows)} rows)")
        return out
    columns = [("prompt", prompt), ("completion", completion), ("input", input)]
    for key, column in columns:
        if column:
            require_column(rows, path, column, key)
            require_text(rows, path, column)
    return [{"instruction": r[prompt], "input": r[input] if input else "",
             **({"output": r[completion]} if completion else {}), **{f: r[c] for f, c in (keep or {}).items()}}
            for r in rows]
