"""Kubernetes API access: cluster config, the rate-limited client, informers, events and patches."""
