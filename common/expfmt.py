"""The Prometheus text format (0.0.4), written as Go's expfmt writes it; prometheus_client is not needed.

`exposition()` renders metric families the way a Go sidecar's /metrics does: families sorted by
name, labels sorted, numbers like Go's strconv (`le="1"`, not `le="1.0"`), a histogram series as its
buckets then `_sum` then `_count`, no `_created` series, and no family without series (a Go `*Vec`
with no children is not exported). A family is anything shaped like prometheus_client's `Metric`
(common.metrics), or the livenessprobe's own families, which it builds without prometheus_client
(its import alone would take the node sidecar over its memory budget).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from common.govalues import format_float

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Sample(Protocol):
    """One line of a family: `name{labels} value` (prometheus_client's `Sample` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def value(self) -> float: ...


class Family(Protocol):
    """A metric family: prometheus_client's `Metric` fits (a counter's name without `_total`)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def documentation(self) -> str: ...
    @property
    def samples(self) -> Sequence[Sample]: ...


def exposition(families: Iterable[Family]) -> str:
    """Write families as Go's expfmt does (see the module docstring)."""
    lines: list[str] = []
    for family in sorted(families, key=_exposed_name):
        derived = (f"{family.name}_created",) if family.type in ("counter", "histogram", "summary") else ()
        samples = [s for s in family.samples if s.name not in derived]
        if not samples:
            continue
        name = _exposed_name(family)
        kind = family.type if family.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        lines.append(f"# HELP {name} {family.documentation.translate(_HELP_ESCAPE)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{s.name}{_labels(s)} {format_float(s.value)}" for s in sorted(samples, key=_go_order))
    return "".join(line + "\n" for line in lines)


def _exposed_name(family: Family) -> str:
    """prometheus_client keeps a counter's name without `_total`; the text format (and Go) has it."""
    return f"{family.name}_total" if family.type == "counter" else family.name


_SUFFIX_RANK = {"_bucket": 0, "_sum": 1, "_count": 2}
_HELP_ESCAPE = str.maketrans({"\\": "\\\\", "\n": "\\n"})
_LABEL_ESCAPE = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _go_order(sample: Sample) -> tuple[tuple[str, ...], int, float]:
    """Series sorted by label values; in a histogram series the buckets, then _sum, then _count."""
    series = tuple(value for key, value in sorted(sample.labels.items()) if key != "le")
    rank = next((r for suffix, r in _SUFFIX_RANK.items() if sample.name.endswith(suffix)), 0)
    return series, rank, float(sample.labels.get("le", 0))


def _labels(sample: Sample) -> str:
    pairs = sorted((k, v) for k, v in sample.labels.items() if k != "le")
    if "le" in sample.labels:
        pairs.append(("le", format_float(float(sample.labels["le"]))))
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{v.translate(_LABEL_ESCAPE)}"' for k, v in pairs) + "}"
