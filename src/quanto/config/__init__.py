"""Job-file models (pydantic v2), YAML loading and secrets from the environment."""
