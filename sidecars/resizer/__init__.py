"""sidecars/resizer package."""
