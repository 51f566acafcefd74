"""Market data: vendors, canonical schemas and the ingest stage."""
