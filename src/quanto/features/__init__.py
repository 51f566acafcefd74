"""Features: a registry of named, versioned, backward-looking per-symbol features (technical, statistical)."""
