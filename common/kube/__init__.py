"""common/kube package."""
