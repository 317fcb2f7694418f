"""Stub generation: compile `proto/*.proto` into the committed Python modules.

    python -m proto.generate           # regenerate proto/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python -m proto.generate --check   # exit 1 naming the committed stubs that are stale

protoc runs with the repository root as its include path, so the modules import each other as
`from proto import csi_pb2`; the Google well-known protos come from grpc_tools' bundled copy.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
SOURCES = ("csi.proto", "pluginregistration.proto")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_names() -> list[str]:
    """The file names (inside proto/) that generation produces."""
    return [src.removesuffix(".proto") + suffix for src in SOURCES for suffix in SUFFIXES]


def generate(out_root: Path) -> Path:
    """Run protoc into `out_root`; returns the directory holding the generated proto/ modules."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(PROTO_DIR / src) for src in SOURCES),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return out_root / PROTO_DIR.name


def stale_files() -> list[str]:
    """Committed stubs that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="proto-check-") as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for name in generated_names():
            committed = PROTO_DIR / name
            if not committed.exists() or not filecmp.cmp(fresh / name, committed, shallow=False):
                stale.append(f"proto/{name}")
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    opts = parser.parse_args(argv)
    if opts.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs (run `make proto`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory(prefix="proto-gen-") as tmp:
        fresh = generate(Path(tmp))
        for name in generated_names():
            shutil.copyfile(fresh / name, PROTO_DIR / name)
            print(f"wrote proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
