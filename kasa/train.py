"""``python -m kasa.train [overrides]``: the same as ``kasa-train`` (:mod:`kasa.cli.train`)."""

from kasa.cli.train import main

if __name__ == "__main__":
    main()
