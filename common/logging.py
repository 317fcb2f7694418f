"""Logging: klog-style verbosity (`--v=N`) and output formats on top of structlog.

Every log call is a constant message plus key-value fields::

    log.info("provisioning succeeded", pvc="ns/name", pv="pvc-1234")
    log.info("GRPC call", method="/csi.v1.Controller/CreateVolume", request=lazy, v=5)

The optional ``v`` field is the klog verbosity of the line: it is printed only when ``--v`` is at
least that high (0 always). Values are rendered only for lines that pass the filter, so a ``Lazy``
value costs nothing when its line is dropped — that is how the CSI call trace at ``--v=5`` stays free
at the default verbosity.

Formats (``--logging-format``): ``text`` (klog's header plus ``key="value"`` pairs, the Go sidecars'
default), ``json`` (one object a line with ``ts``, ``level``, ``msg``, ``v`` and the fields, like
component-base's JSON format), and a coloured console renderer for debug mode on a terminal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

Format = Literal["text", "json", "console"]

_state = {"verbosity": 0}

_LEVEL_LETTER = {"debug": "I", "info": "I", "warning": "W", "error": "E", "critical": "E", "exception": "E"}


class Lazy:
    """A log value computed only when its line is actually written (e.g. a stripped CSI request)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn

    def __str__(self) -> str:
        return str(self._fn())

    __repr__ = __str__


def verbosity() -> int:
    """The configured `--v` level."""
    return _state["verbosity"]


def enabled(level: int) -> bool:
    """True when lines at klog verbosity `level` are written (`if enabled(5): ...`)."""
    return _state["verbosity"] >= level


def _filter_verbosity(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    level = event.get("v", 0)
    if isinstance(level, int) and level > _state["verbosity"]:
        raise structlog.DropEvent
    return event


def _resolve_lazy(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, Lazy):
            event[key] = str(value)
    return event


def _quote(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _klog_text(_: object, method: str, event: MutableMapping[str, Any]) -> str:
    """Render like klog's text format: `I1124 03:31:16.123456  4242 logger] "msg" key="value"`."""
    now = time.time()
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    letter = _LEVEL_LETTER.get(method, "I")
    msg = event.pop("event", "")
    event.pop("v", None)
    caller = event.pop("caller", "")
    exc = event.pop("exception", None)
    pairs = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    line = f"{letter}{stamp} {os.getpid():>7} {caller}] {json.dumps(str(msg), ensure_ascii=False)}"
    if pairs:
        line += " " + pairs
    if exc:
        line += "\n" + str(exc)
    return line


def _json_fields(_: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["msg"] = event.pop("event", "")
    event["level"] = "info" if method == "debug" else method
    event["ts"] = round(time.time(), 6)
    event.setdefault("v", 0)
    return event


def configure(
    *, verbosity: int = 0, fmt: Format = "text", stream: TextIO | None = None, console: bool | None = None
) -> None:
    """Set up logging once per process. `console=None` picks the console renderer on a TTY."""
    out = stream if stream is not None else sys.stderr
    _state["verbosity"] = verbosity
    use_console = fmt == "console" or (fmt == "text" and console is not False and (console or out.isatty()))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _filter_verbosity,
        structlog.processors.format_exc_info,
        _resolve_lazy,
    ]
    if fmt == "json":
        processors += [_json_fields, structlog.processors.JSONRenderer(default=str)]
    elif use_console:
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", utc=False),
            structlog.dev.ConsoleRenderer(),
        ]
    else:
        processors.append(_klog_text)
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger that names its component (the module) in every line."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(caller=name)
    return logger
