"""Run folders: the one place that reads and writes them.

- :mod:`.files`: file names, atomic writers, the saved config, weights read without trusting them;
- :mod:`.hashing`: the config hash that names a run and the keys that do not change one;
- :mod:`.folder`: claiming a folder (lock, fresh / resume / skip-if-finished), resume rules;
- :mod:`.checkpoints`: atomic checkpoint writes, checks against the config hash, finding best / last;
- :mod:`.load`: a run folder back in memory (:func:`load_run`), for kasa-eval, kasa-export and the analyses;
- :mod:`.evaluate` / :mod:`.export`: what kasa-eval and kasa-export do with a loaded run;
- :mod:`.failures`: failure records of multirun points.
"""
