"""No TLS in the node sidecars: OpenSSL is kept out of csi-node-driver-registrar and livenessprobe.

Neither ever speaks TLS: they reach the driver over its socket through gRPC (whose C core carries its
own TLS) and serve kubelet plain HTTP; neither talks to the Kubernetes API. Yet asyncio imports the
`ssl` module whenever it can, which loads OpenSSL's libcrypto: ~4 MiB of resident memory, a tenth of
these sidecars' 40 MiB budget. Marking `ssl` unavailable before asyncio is first imported makes
asyncio take the path it takes on a Python built without OpenSSL.

Debug mode embeds the test bed, whose Kubernetes client needs `ssl`: with any `--debug` on the
command line nothing is changed, nor when `ssl` is already loaded (an importer such as a test run).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def skip_openssl(argv: Sequence[str]) -> bool:
    """Make `import ssl` fail from now on unless debug mode may run; True if it was done."""
    if "ssl" in sys.modules or any(arg.lstrip("-").startswith("debug") for arg in argv if arg[:1] == "-"):
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]  # the import system's "not available" marker
    return True
