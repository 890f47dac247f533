"""Verdicts: the bars a check judges by (:mod:`.bars`), the per-coordinate
verdicts with their evidence (:mod:`.judge`) and the report assembled from
them (:mod:`.assemble`)."""
