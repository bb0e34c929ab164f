"""``python -m kasa.params``: the same as ``kasa-params`` (:mod:`kasa.cli.params`)."""

from kasa.cli.params import main

if __name__ == "__main__":
    main()
