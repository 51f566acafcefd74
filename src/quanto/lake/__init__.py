"""Parquet storage: paths, atomic content-addressed writes and manifests."""
