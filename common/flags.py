"""Flags: command lines parsed the way Go's `flag` package parses them (shared groups: common.standardflags).

Every sidecar accepts both spellings (pflag's `--name` and Go flag's `-name`), so any container args
that work upstream work here:

    --name=value   --name value   -name=value   -name value
    --bool         --bool=false   (values as Go's strconv.ParseBool: 1 0 t f T F true false TRUE ...)
    --             ends the flags

Values follow Go: durations as `time.ParseDuration` (`10s`, `1m30s`, `1.5h`, `300us`; a bare number
other than `0` is an error), integers as `strconv.ParseInt(s, 0, 64)` (`10`, `0x1f`, `0o17`, `010`).
Errors use Go's wording (`flag provided but not defined: -foo`, `invalid value "x" for flag -timeout:
parse error`) and exit 2.

One deliberate difference: `-leader-election false`. Go sets the flag to true, then stops parsing at
"false" and silently ignores the rest of the line; pflag sets it to true and ignores "false". Both
hide a mistake, so a positional argument is an error here (the message says `write
-leader-election=false`), unless the program declares positional arguments (`FlagSet(positional=True)`,
where parsing stops at the first one, as in Go).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

from common.errors import ConfigError, FlagError
from common.govalues import (
    BOOLS,
    format_bool,
    format_duration,
    format_float,
    format_string_map,
    go_quote,
    parse_bool,
    parse_duration,
    parse_float,
    parse_int,
    parse_string_map,
    parse_uint,
)
from common.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


def _parse_duration_flag(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:  # Go's flag package reports every duration error as errParse
        raise ValueError("parse error") from None


def _plain(parse: Callable[[str], Any]) -> Callable[[str, Any], Any]:
    """A parser that ignores the current value (only maps and custom values merge repeats)."""
    return lambda text, _: parse(text)


class HelpRequested(Exception):
    """`-h`/`--help` was given and the program defines no flag of that name (Go's flag.ErrHelp)."""


class FlagOptions(TypedDict, total=False):
    """Keyword options every definer takes."""

    implemented: bool
    """False: accepted for compatibility; `Flags.warn_unimplemented()` warns when it is set."""
    deprecated: str | None
    """A hint (e.g. "use --http-endpoint instead"), logged as a deprecation warning when the flag is set."""


@dataclass(frozen=True)
class FlagDefinition:
    """One defined flag: what `--help` shows and how its value parses."""

    name: str
    kind: str
    type_word: str
    default: Any
    usage: str
    parse: Callable[[str, Any], Any]
    show: Callable[[Any], str]
    zero: str
    options: FlagOptions


_Flag = FlagDefinition


class FlagSet:
    """The flags of one program. Define with the typed definers, then `parse(argv)`."""

    def __init__(self, program: str, *, positional: bool = False) -> None:
        self.program = program
        self._positional = positional
        self._flags: dict[str, FlagDefinition] = {}

    def definitions(self) -> dict[str, FlagDefinition]:
        """The defined flags by name (a copy), e.g. to build a program that accepts several sets."""
        return dict(self._flags)

    def add(self, flag: FlagDefinition) -> None:
        """Define a flag from a definition (e.g. one of another program's `definitions()`)."""
        self._add(flag)

    def _add(self, flag: FlagDefinition) -> None:
        if flag.name in self._flags:
            raise ValueError(f"{self.program} flag redefined: {flag.name}")
        self._flags[flag.name] = flag

    def string(self, name: str, default: str, usage: str, **options: Unpack[FlagOptions]) -> None:
        """A string flag (Go `flag.String`)."""
        self._add(_Flag(name, "string", "string", default, usage, _plain(str), str, "", options))

    def boolean(self, name: str, default: bool, usage: str, **options: Unpack[FlagOptions]) -> None:  # noqa: FBT001
        """A boolean flag: bare `--name` means true; `--name=false` turns it off."""
        self._add(
            _Flag(name, "boolean", "", default, usage, _plain(parse_bool), format_bool, "false", options)
        )

    def integer(self, name: str, default: int, usage: str, **options: Unpack[FlagOptions]) -> None:
        """A signed 64-bit integer flag (Go `flag.Int`)."""
        self._add(_Flag(name, "integer", "int", default, usage, _plain(parse_int), str, "0", options))

    def unsigned(self, name: str, default: int, usage: str, **options: Unpack[FlagOptions]) -> None:
        """An unsigned integer flag (Go `flag.Uint`): `-1` is a parse error."""
        self._add(_Flag(name, "unsigned", "uint", default, usage, _plain(parse_uint), str, "0", options))

    def floating(self, name: str, default: float, usage: str, **options: Unpack[FlagOptions]) -> None:
        """A float64 flag (Go `flag.Float64`)."""
        parse = _plain(parse_float)
        self._add(_Flag(name, "floating", "float", float(default), usage, parse, format_float, "0", options))

    def duration(self, name: str, default: float, usage: str, **options: Unpack[FlagOptions]) -> None:
        """A Go duration flag; the value is in seconds (float)."""
        parse, show = _plain(_parse_duration_flag), format_duration
        self._add(_Flag(name, "duration", "duration", float(default), usage, parse, show, "0s", options))

    def string_map(
        self, name: str, default: dict[str, str], usage: str, **options: Unpack[FlagOptions]
    ) -> None:
        """A `k:v,k2:v2` map (csi-lib-utils `stringMap`, e.g. --leader-election-labels); repeats merge."""
        parse, show = parse_string_map, format_string_map
        self._add(_Flag(name, "string_map", "value", dict(default), usage, parse, show, "map[]", options))

    def value(
        self,
        name: str,
        default: T,
        usage: str,
        parse: Callable[[str, T], T],
        **options: Unpack[FlagOptions],
    ) -> None:
        """A custom flag (Go `flag.Var`): `parse(text, current)` returns the new value."""
        self._add(_Flag(name, "value", "value", default, usage, parse, str, "", options))

    def defined(self, name: str) -> bool:
        """Whether the program defines flag `name`."""
        return name in self._flags

    def takes_value(self, name: str) -> bool:
        """Whether `-name` consumes the next argument when written without `=` (any non-boolean flag)."""
        flag = self._flags.get(name)
        return flag is not None and flag.kind != "boolean"

    def parse(self, argv: list[str]) -> Flags:
        """Parse `argv` (without the program name). Raises FlagError or HelpRequested."""
        values = {name: flag.default for name, flag in self._flags.items()}
        seen: list[str] = []
        args = list(argv)
        after_bool = ""
        while args:
            arg = args.pop(0)
            if len(arg) < 2 or arg[0] != "-":
                args.insert(0, arg)
                break
            if arg == "--":
                break
            name = arg[2:] if arg.startswith("--") else arg[1:]
            if not name or name[0] in "-=":
                raise FlagError(f"bad flag syntax: {arg}")
            name, has_value, text = name.partition("=")
            flag = self._flags.get(name)
            if flag is None:
                if name in ("help", "h"):
                    raise HelpRequested
                raise FlagError(f"flag provided but not defined: -{name}")
            after_bool = "" if has_value or flag.kind != "boolean" else name
            if flag.kind == "boolean":
                text = text if has_value else "true"
                problem = f"invalid boolean value {go_quote(text)} for -{name}"
            else:
                if not has_value and not args:
                    raise FlagError(f"flag needs an argument: -{name}")
                text = text if has_value else args.pop(0)
                problem = f"invalid value {go_quote(text)} for flag -{name}"
            try:
                values[name] = flag.parse(text, values[name])
            except (ValueError, ConfigError) as err:
                raise FlagError(f"{problem}: {err}") from None
            seen.append(name)
        if args and not self._positional:
            hint = f" (write -{after_bool}={args[0]})" if after_bool and args[0] in BOOLS else ""
            raise FlagError(
                f"unexpected argument {go_quote(args[0])}: {self.program} takes no arguments{hint}"
            )
        return Flags(self, values, seen, tuple(args))

    def usage(self) -> str:
        """Go's `Usage of <program>:` followed by flag.PrintDefaults(), sorted by name."""
        lines = [f"Usage of {self.program}:"]
        for name in sorted(self._flags):
            flag = self._flags[name]
            type_word, usage = flag.type_word, flag.usage
            quoted = re.search(r"`([^`]*)`", usage)
            if quoted:  # Go's UnquoteUsage: a `backquoted` word names the value
                type_word, usage = (
                    quoted.group(1),
                    usage[: quoted.start()] + quoted.group(1) + usage[quoted.end() :],
                )
            head = f"  -{name}" + (f" {type_word}" if type_word else "")
            text = head + ("\t" if len(head) <= 4 else "\n    \t") + usage.replace("\n", "\n    \t")
            shown = flag.show(flag.default)
            if shown != flag.zero:
                text += f" (default {go_quote(shown)})" if flag.kind == "string" else f" (default {shown})"
            lines.append(text)
        return "\n".join(lines) + "\n"

    def _flag(self, name: str) -> FlagDefinition:
        return self._flags[name]


class Flags:
    """The parsed values, read through typed getters: `flags.duration("timeout")`."""

    def __init__(
        self, flagset: FlagSet, values: dict[str, Any], seen: list[str], args: tuple[str, ...]
    ) -> None:
        self.program = flagset.program
        self.args = args
        self._flagset = flagset
        self._values = values
        self._seen = seen

    def _get(self, name: str, kind: str) -> Any:
        flag = self._flagset._flag(name)
        if flag.kind != kind:
            raise TypeError(f"flag {name} is a {flag.kind} flag, not {kind}")
        return self._values[name]

    def string(self, name: str) -> str:
        return str(self._get(name, "string"))

    def boolean(self, name: str) -> bool:
        return bool(self._get(name, "boolean"))

    def integer(self, name: str) -> int:
        return int(self._get(name, "integer"))

    def unsigned(self, name: str) -> int:
        return int(self._get(name, "unsigned"))

    def floating(self, name: str) -> float:
        return float(self._get(name, "floating"))

    def duration(self, name: str) -> float:
        """The value in seconds."""
        return float(self._get(name, "duration"))

    def string_map(self, name: str) -> dict[str, str]:
        return dict(self._get(name, "string_map"))

    def value(self, name: str, cls: type[T]) -> T:
        """The value of a custom (`FlagSet.value`) flag, checked to be a `cls`."""
        found = self._get(name, "value")
        if not isinstance(found, cls):
            raise TypeError(f"flag {name} holds a {type(found).__name__}, not {cls.__name__}")
        return found

    def defined(self, name: str) -> bool:
        """Whether this program has flag `name` at all."""
        return self._flagset.defined(name)

    def is_set(self, name: str) -> bool:
        """Whether the command line set flag `name` (even to its default)."""
        self._flagset._flag(name)
        return name in self._seen

    def warn_unimplemented(self) -> None:
        """Log a warning for every flag set on the command line that is deprecated or not implemented.

        Call it once logging is configured (`apply_logging_flags` does). A custom flag value with a
        `parse_warnings()` method (e.g. FeatureGates) has its warnings logged here too.
        """
        for name in dict.fromkeys(self._seen):
            options = self._flagset._flag(name).options
            if options.get("deprecated"):
                log.warning("flag is deprecated", flag=f"--{name}", hint=options["deprecated"])
            if not options.get("implemented", True):
                log.warning("flag accepted but not implemented yet", flag=f"--{name}")
        for value in self._values.values():
            warnings = getattr(value, "parse_warnings", None)
            if callable(warnings):
                for message, fields in warnings():
                    log.warning(message, **fields)
