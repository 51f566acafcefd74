"""Thin activity adapters: take a request model, call the domain, return a small result model."""
