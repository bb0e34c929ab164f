"""``python -m kasa.analysis.report``: the same as ``kasa-report``."""

import sys

from kasa.analysis.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
