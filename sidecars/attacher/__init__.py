"""sidecars/attacher package."""
