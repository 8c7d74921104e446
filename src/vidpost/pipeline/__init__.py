"""`vidpost run` (the stages in order in one run directory) and `vidpost report` (its HTML page)."""
