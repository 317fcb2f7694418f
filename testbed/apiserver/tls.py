"""TLS material for `--tls`: a throw-away CA and a server certificate for 127.0.0.1, made with `openssl`.

The `openssl` command-line tool is used (the `cryptography` package is not a dependency). Keys are
P-256, so generating both takes a few tens of milliseconds.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSL context trusting only this CA (for Python clients of the test bed)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def generate(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """Write `ca.crt`, `server.crt` and `server.key` into `directory`; RuntimeError without openssl."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to serve the test bed over TLS")
    directory.mkdir(parents=True, exist_ok=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *curve,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=testbed-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    _openssl(
        "req",
        *curve,
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=directory,
    )
    names = {"IP:127.0.0.1", "DNS:localhost"}
    try:
        ip_address(host)
        names.add(f"IP:{host}")
    except ValueError:
        names.add(f"DNS:{host}")
    (directory / "server.ext").write_text(
        f"subjectAltName={','.join(sorted(names))}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "3650",
        "-extfile",
        "server.ext",
        cwd=directory,
    )
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
