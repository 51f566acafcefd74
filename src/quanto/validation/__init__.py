"""Validation rules, quarantine and quality summaries."""
