"""Honest out-of-sample evaluation: walk-forward folds (purged, embargoed), prediction stitching,
per-fold metrics and, later, statistics such as PSR/DSR/PBO.

Domain code only: no Temporal imports, no I/O.
"""
