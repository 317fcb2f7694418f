"""Cluster connection settings: kubeconfig, in-cluster service account, or `$KUBECONFIG`.

The loading rules and all authentication (exec plugins, tokens that rotate, client certificates,
CA bundles, OIDC) come from kubernetes-asyncio's config loaders, so they behave as in client-go.

kubernetes-asyncio's package `__init__` imports its ~1,500 generated model classes (0.3 s and ~35 MiB
of RSS) although the loaders need only `Configuration`. `_import_loaders` imports the loader modules
without running that `__init__`; the rest of the package still loads on first attribute access, so
code that uses the full typed client (the tests do) keeps working in the same process.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"


def _lazy_package(name: str, directory: str) -> types.ModuleType:
    """A package module whose real `__init__` runs only when an attribute it defines is asked for."""
    module = types.ModuleType(name)
    init = os.path.join(directory, "__init__.py")
    module.__path__ = [directory]
    module.__file__ = init
    module.__package__ = name

    def load_rest(attr: str) -> Any:
        if module.__dict__.get("_fully_loaded"):
            raise AttributeError(attr)
        module.__dict__["_fully_loaded"] = True
        with open(init, encoding="utf-8") as source:
            exec(compile(source.read(), init, "exec"), module.__dict__)
        return getattr(module, attr)

    module.__getattr__ = load_rest  # type: ignore[method-assign]
    sys.modules[name] = module
    return module


def _import_loaders() -> Any:
    """Import `kubernetes_asyncio.config` cheaply (see the module docstring)."""
    if "kubernetes_asyncio" not in sys.modules:
        spec = importlib.util.find_spec("kubernetes_asyncio")
        if spec is None or spec.origin is None:
            raise ConfigError("kubernetes-asyncio is not installed")
        root = os.path.dirname(spec.origin)
        package = _lazy_package("kubernetes_asyncio", root)
        client = _lazy_package("kubernetes_asyncio.client", os.path.join(root, "client"))
        configuration = importlib.import_module("kubernetes_asyncio.client.configuration")
        package.__dict__["client"] = client
        client.__dict__["Configuration"] = configuration.Configuration

        def api_client(*args: Any, **kwargs: Any) -> Any:
            if client.__dict__.get("ApiClient") is api_client:
                del client.__dict__["ApiClient"]  # the next lookup runs the real __init__
            real = client.ApiClient
            return real(*args, **kwargs)

        client.__dict__["ApiClient"] = api_client
    return importlib.import_module("kubernetes_asyncio.config")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Where the API server is and how to authenticate to it.

    `configuration` is kubernetes-asyncio's `Configuration`; its `auth_headers()` refreshes
    exec-plugin and service-account tokens when they rotate.
    """

    host: str
    ssl_context: ssl.SSLContext | None
    tls_server_name: str | None
    configuration: Any
    source: str

    async def auth_headers(self) -> dict[str, str]:
        """The Authorization header (bearer token or basic auth) for the next request."""
        headers: dict[str, str] = {}
        settings = await self.configuration.auth_settings()
        bearer = settings.get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = bearer["value"]
        elif self.configuration.username:
            headers["Authorization"] = self.configuration.get_basic_auth_token()
        return headers


def _ssl_context(configuration: Any) -> ssl.SSLContext | None:
    if not str(configuration.host).startswith("https"):
        return None
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def load_cluster_config(
    *,
    kubeconfig: str = "",
    master: str = "",
    use_env: bool = False,
    allow_default_file: bool = False,
) -> ClusterConfig:
    """Find the cluster the way the Go sidecars do.

    Order: `$KUBECONFIG` when `use_env` (only the provisioner reads it upstream, and it then wins over
    the flag), the `--kubeconfig` file, the in-cluster service account, and in debug mode
    (`allow_default_file`) `$KUBECONFIG` or `~/.kube/config`. `--master` overrides the server URL.
    """
    loaders = _import_loaders()
    configuration = sys.modules["kubernetes_asyncio.client.configuration"].Configuration()
    path = (os.environ.get("KUBECONFIG", "") if use_env else "") or kubeconfig
    try:
        if path:
            await loaders.load_kube_config(config_file=path, client_configuration=configuration)
            source = path
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").exists():
            loaders.load_incluster_config(client_configuration=configuration)
            source = "in-cluster service account"
        elif allow_default_file:
            default = os.environ.get("KUBECONFIG") or str(DEFAULT_KUBECONFIG)
            await loaders.load_kube_config(config_file=default, client_configuration=configuration)
            source = default
        else:
            raise ConfigError(
                "no cluster configuration: set --kubeconfig or run in a pod with a service account"
            )
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, loaders.ConfigException) as exc:
        raise ConfigError(f"cannot load cluster configuration from {path or 'the cluster'}: {exc}") from exc
    if master:
        configuration.host = master
    return ClusterConfig(
        host=str(configuration.host).rstrip("/"),
        ssl_context=_ssl_context(configuration),
        tls_server_name=configuration.tls_server_name,
        configuration=configuration,
        source=source,
    )


def pod_namespace() -> str:
    """The namespace this pod runs in (`$POD_NAMESPACE`, then the service account file), else `default`."""
    if namespace := os.environ.get("POD_NAMESPACE", ""):
        return namespace
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"
