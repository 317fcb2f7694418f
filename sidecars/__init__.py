"""sidecars package."""
