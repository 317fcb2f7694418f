"""sidecars/livenessprobe package."""
