"""Reading finished runs for people: the one-page HTML report, seed sweeps (mean ± std) and the side-by-side
comparison of runs. They read run folders only (``crlf.run_files``), never train or evaluate."""
