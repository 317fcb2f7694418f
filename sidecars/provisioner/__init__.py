"""sidecars/provisioner package."""
