"""Worker construction per task queue and the worker process entry point."""
