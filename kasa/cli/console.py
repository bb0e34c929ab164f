"""A readable ``kasa-train`` console: each line once, no colour codes in logs, no advertisements.

Under Hydra the root logger has Hydra's handlers (console and the job's ``.log`` file); Lightning adds its
own console handler to the ``lightning`` logger at import, so every Lightning info line appeared twice. The
transformers load report wraps its title in ANSI bold codes, which a log file or a pipe shows raw. Lightning
advertises its cloud logger with a "Tip" line on every ``Trainer``.
"""

from __future__ import annotations

import logging
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ADVERTISEMENTS = ("💡 Tip:",)


class _StripAnsi(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "\x1b[" in record.msg:
            record.msg = ANSI.sub("", record.msg)
        return True


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.lstrip().startswith(ADVERTISEMENTS))


def _add_filter(target: logging.Logger | logging.Handler, cls: type[logging.Filter]) -> None:
    if not any(isinstance(f, cls) for f in target.filters):
        target.addFilter(cls())


def quiet_console() -> None:
    """Apply the three fixes above (idempotent; call after Hydra has configured logging)."""
    import lightning  # noqa: F401  (its import installs the handler removed here)
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    light = logging.getLogger("lightning")
    if root.handlers:  # Hydra's console + file handlers print Lightning's records already
        for h in list(light.handlers):
            if type(h) is logging.StreamHandler:
                light.removeHandler(h)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        _add_filter(logging.getLogger(name), _DropAdvertisements)
    hf_root = hf_logging.get_logger()  # the library root logger ("transformers")
    for h in [*hf_root.handlers, *root.handlers]:
        _add_filter(h, _StripAnsi)


def report_error(prog: str, exc: BaseException) -> int:
    """How every console script ends on a :class:`~kasa.errors.KasaError`: one line ``<prog>: error: <message>``
    on stderr and exit status 2 (anything else is a bug and keeps its traceback)."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
