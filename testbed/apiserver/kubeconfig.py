"""Kubeconfig files pointing at the test bed, in the shape kubectl and kubernetes-asyncio read."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "testbed"


def render(
    url: str, *, token: str | None = None, ca_cert: Path | None = None, namespace: str = "default"
) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": url}
    if ca_cert is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_cert.read_bytes()).decode()
    user: dict[str, Any] = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write(path: Path, config: dict[str, Any]) -> Path:
    """Write atomically (a reader never sees half a file), readable by the owner only (it holds a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(partial, 0o600)
    partial.replace(path)
    return path
