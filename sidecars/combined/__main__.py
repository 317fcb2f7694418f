"""csi-controller-sidecars' entrypoint: the union command line, one runtime, one group per controller.

    python -m sidecars.combined --enable=provisioner,attacher,resizer --csi-address=/csi/csi.sock \\
        --leader-election --v=5

Process-wide choices where the single sidecars differ: `$KUBECONFIG` overrides `--kubeconfig` when the
provisioner is enabled (as csi-provisioner); `process_start_time_seconds` has client_golang's help text
when the provisioner is enabled (as csi-provisioner's), component-base's otherwise; the API client's
User-Agent is `csi-controller-sidecars/<version>`. `--debug` embeds the test bed the attacher's debug
mode uses (PV binder, scheduler, attach/detach controller, kubelet), enough for all three.
"""

from __future__ import annotations

from common import debug, entrypoint
from common.logging import get_logger
from common.metrics import Metrics
from common.runtime import Runtime
from common.standardflags import apply_logging_flags, version
from sidecars.combined.cli import PROGRAM, CombinedConfig, build_flagset, tokenize
from sidecars.combined.controller import build_groups

log = get_logger("sidecars.combined")

BED = debug.Bed(controllers=("pv", "scheduler", "attachdetach", "kubelet"))
"""What `--debug` embeds when no cluster is configured."""


async def amain(argv: list[str]) -> int:
    flagset = build_flagset()
    flags = entrypoint.parse_or_exit(flagset, argv)
    apply_logging_flags(flags)
    config = CombinedConfig.from_flags(flags, tokenize(flagset, argv))
    log.info("Version", version=version(), controllers=list(config.enabled))
    for flag in config.ignored:
        log.warning("flag ignored: no enabled controller has it", flag=flag)
    metrics = Metrics(alpha_start_time=config.provisioner is None)
    async with Runtime.open(
        PROGRAM,
        config.standard,
        use_kubeconfig_env=config.provisioner is not None,
        metrics=metrics,
        max_log_length=config.max_grpc_log_length,
    ) as rt:
        groups = await build_groups(rt, config)
        await rt.run_groups(groups)
    return 0


def main() -> None:
    entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=BED))


if __name__ == "__main__":
    main()
