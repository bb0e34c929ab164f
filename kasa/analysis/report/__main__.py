"""``python -m kasa.analysis.report``: the same as ``kasa-report``."""

import sys

from kasa.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
