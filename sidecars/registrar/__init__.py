"""sidecars/registrar package."""
