"""csi-attacher's entrypoint: flags, the runtime, the handler choice and the attach controller.

python -m sidecars.attacher --csi-address=/csi/csi.sock --leader-election --v=5
"""

from __future__ import annotations

from common import debug, entrypoint
from common.logging import get_logger
from common.runtime import Runtime
from common.standardflags import apply_logging_flags, version
from sidecars.attacher import explain
from sidecars.attacher.cli import PROGRAM, AttacherConfig, build_flagset
from sidecars.attacher.controller import AttachController
from sidecars.attacher.handler import discover

log = get_logger(__name__)

LOCK_PREFIX = "external-attacher-leader-"
"""The Lease is `external-attacher-leader-<driver>`, sanitized (e.g. ...-hostpath-csi-k8s-io)."""


async def amain(argv: list[str]) -> int:
    flags = entrypoint.parse_or_exit(build_flagset(), argv)
    apply_logging_flags(flags)
    config = AttacherConfig.from_flags(flags)
    log.info("Version", version=version())
    async with Runtime.open(
        PROGRAM,
        config.standard,
        resync=config.resync,
        max_log_length=config.max_grpc_log_length,
    ) as rt:
        capabilities = await discover(rt.csi)
        controller = AttachController(config=config, conns=rt, capabilities=capabilities)
        await rt.run(lock_name=LOCK_PREFIX + rt.driver_name, controllers=[controller])
    return 0


def main() -> None:
    entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=debug.ATTACHER, explain=explain.amain))


if __name__ == "__main__":
    main()
