"""The sidecars' exception tree: which failures are the user's, which the driver's, and how each exits.

    SidecarError                 exit 1, one line on stderr, never a traceback
    ├── ConfigError              bad flags or settings found after parsing (e.g. conflicting flags)
    │   └── FlagError            a flag the parser rejects: unknown flag, bad value (exit 2, like Go)
    └── CSIError                 the driver cannot be used
        ├── CSIConnectError      socket never appeared / driver never answered within the timeout
        ├── DriverChangedError   the driver came back under another name after a reconnect
        └── CapabilityError      the driver lacks a capability this sidecar requires

Reconcile errors (a PVC that cannot be provisioned, a VolumeAttachment that fails) are not here:
they are retried with backoff and reported as Events, never as process exits.
"""

from __future__ import annotations


class SidecarError(Exception):
    """A failure that ends the process with `exit_code` and a one-line message."""

    exit_code = 1


class ConfigError(SidecarError):
    """Settings that cannot work together, found after the flags parsed."""


class FlagError(ConfigError):
    """A command line the flag parser rejects; Go's flag packages exit 2 for these."""

    exit_code = 2


class CSIError(SidecarError):
    """The CSI driver cannot be used."""


class CSIConnectError(CSIError):
    """The driver's socket did not appear or the driver did not answer in time."""


class DriverChangedError(CSIError):
    """After a reconnect the driver reports another name: this process serves the old one, so exit."""


class CapabilityError(CSIError):
    """The driver lacks a capability this sidecar cannot work without."""
