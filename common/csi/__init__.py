"""common/csi package."""
