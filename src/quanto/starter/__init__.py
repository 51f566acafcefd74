"""The `quanto` CLI: starts, signals and queries workflows; manages the local dev server."""
