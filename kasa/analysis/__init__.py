"""Analyses of runs: singular-value spectra and orthonormality drift (:mod:`.spectra`), the paper's
tables from ``results.json`` files (:mod:`.report`, console script ``kasa-report``)."""
