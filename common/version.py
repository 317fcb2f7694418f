"""This project's version: the one source of truth, read by setuptools (`pyproject.toml`) and `--version`.

A constant rather than `importlib.metadata`, whose import (email, zipfile, csv) costs ~1 MiB of RSS at
every start: the node sidecars log their version at startup within a 40 MiB budget.
"""

VERSION = "0.1.0"
