"""common.notls: OpenSSL kept out of the node sidecars (not in debug mode); asyncio works without it.

And the rest of the node sidecars' memory diet (40 MiB idle): what their entry modules never load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT
    )
    return out.stdout.strip()


def test_ssl_unavailable_and_asyncio_serves_plain_tcp() -> None:
    code = (
        "from common.notls import skip_openssl\n"
        "print(skip_openssl(['--csi-address=/csi/csi.sock', '--v=5']))\n"
        "import asyncio\n"
        "try:\n"
        "    import ssl\n"
        "except ImportError:\n"
        "    print('no ssl')\n"
        "async def main():\n"
        "    async def echo(r, w):\n"
        "        w.write(await r.readline()); await w.drain(); w.close()\n"
        "    server = await asyncio.start_server(echo, '127.0.0.1', 0)\n"
        "    r, w = await asyncio.open_connection('127.0.0.1', server.sockets[0].getsockname()[1])\n"
        "    w.write(b'hello\\n'); print((await r.readline()).decode().strip())\n"
        "    w.close(); server.close()\n"
        "asyncio.run(main())\n"
    )
    assert run(code).splitlines() == ["True", "no ssl", "hello"]


@pytest.mark.parametrize("flag", ["--debug", "-debug", "--debug=true", "--debug=false"])
def test_debug_mode_keeps_ssl(flag: str) -> None:
    """Debug mode embeds the test bed, whose Kubernetes client imports ssl (any spelling keeps it)."""
    code = (
        "from common.notls import skip_openssl\n"
        f"print(skip_openssl(['--csi-address=/x', {flag!r}]))\n"
        "import ssl\n"
        "print(ssl.OPENSSL_VERSION[:7])\n"
    )
    assert run(code).splitlines() == ["False", "OpenSSL"]


def test_already_loaded_ssl_is_left_alone() -> None:
    """An importer that has ssl already (a test run, the combined process) is not changed."""
    assert run("import ssl\nfrom common.notls import skip_openssl\nprint(skip_openssl([]), ssl.HAS_SNI)") == (
        "False True"
    )


@pytest.mark.parametrize("module", ["sidecars.registrar", "sidecars.livenessprobe"])
def test_node_sidecars_load_no_kubernetes_client_prometheus_client_or_openssl(module: str) -> None:
    code = (
        f"import sys, {module}.__main__\n"
        "heavy = ('kubernetes_asyncio', '_ssl', 'prometheus_client')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(('common.kube', 'common.runtime', 'importlib.metadata')))\n"
        "print(bad, sys.modules['ssl'])\n"
    )
    assert run(code) == "[] None"
