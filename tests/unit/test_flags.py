"""Flags parse like Go's `flag` package: every syntax, Go's value forms and Go's error wording."""

from __future__ import annotations

import io
import json
import math

import pytest

from common.errors import ConfigError, FlagError
from common.flags import Flags, FlagSet, HelpRequested
from common.govalues import format_duration, format_float, parse_duration, parse_float, parse_int
from common.logging import configure
from common.standardflags import add_logging_flags, add_standard_flags, apply_logging_flags, check_http_flags


def attacher_flags() -> FlagSet:
    fs = FlagSet("csi-attacher")
    add_logging_flags(fs)
    add_standard_flags(fs, csi_timeout_default=15.0)
    fs.unsigned("worker-threads", 10, "Number of attacher worker threads")
    fs.integer("max-entries", 0, "Max entries per each page in volume lister call, 0 means no limit.")
    fs.duration("resync", 600.0, "Resync interval of the controller.")
    return fs


def parse(*argv: str) -> Flags:
    return attacher_flags().parse(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--csi-address=/csi/sock"],
        ["--csi-address", "/csi/sock"],
        ["-csi-address=/csi/sock"],
        ["-csi-address", "/csi/sock"],
    ],
)
def test_every_spelling_sets_a_string(argv: list[str]) -> None:
    flags = parse(*argv)
    assert flags.string("csi-address") == "/csi/sock"
    assert flags.is_set("csi-address")


def test_defaults_and_is_set() -> None:
    flags = parse()
    assert flags.string("csi-address") == "/run/csi/socket"
    assert flags.duration("timeout") == 15.0
    assert flags.duration("leader-election-lease-duration") == 15.0
    assert flags.floating("kube-api-qps") == 5.0
    assert flags.integer("kube-api-burst") == 10
    assert flags.string("metrics-path") == "/metrics"
    assert flags.string_map("leader-election-labels") == {}
    assert not flags.is_set("csi-address")


def test_setting_a_flag_to_its_default_still_counts_as_set() -> None:
    assert parse("--timeout=15s").is_set("timeout")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--leader-election"], True),
        (["-leader-election"], True),
        (["--leader-election=true"], True),
        (["--leader-election=false"], False),
        (["--leader-election=1"], True),
        (["--leader-election=0"], False),
        (["--leader-election=t"], True),
        (["--leader-election=F"], False),
        (["--leader-election=TRUE"], True),
        (["--leader-election=False"], False),
        (["--leader-election", "--leader-election=false"], False),
        ([], False),
    ],
)
def test_booleans_follow_strconv_parsebool(argv: list[str], expected: bool) -> None:
    assert parse(*argv).boolean("leader-election") is expected


@pytest.mark.parametrize("value", ["yes", "tRuE", "", "2", "on"])
def test_a_bad_boolean_is_go_s_error(value: str) -> None:
    with pytest.raises(FlagError) as err:
        parse(f"--leader-election={value}")
    assert str(err.value) == f"invalid boolean value {json.dumps(value)} for -leader-election: parse error"
    assert err.value.exit_code == 2


def test_bool_then_false_is_rejected_with_a_hint() -> None:
    # Go would set the flag to true and silently stop parsing at "false".
    with pytest.raises(FlagError) as err:
        parse("-leader-election", "false", "--timeout=1s")
    assert str(err.value) == (
        'unexpected argument "false": csi-attacher takes no arguments (write -leader-election=false)'
    )


def test_positional_arguments_are_rejected_unless_declared() -> None:
    with pytest.raises(FlagError, match='unexpected argument "extra"'):
        parse("--timeout=1s", "extra")
    fs = FlagSet("tool", positional=True)
    fs.boolean("x", False, "x")
    flags = fs.parse(["-x", "a", "-y", "b"])  # like Go, parsing stops at the first argument
    assert flags.boolean("x")
    assert flags.args == ("a", "-y", "b")


def test_double_dash_ends_the_flags() -> None:
    assert parse("--timeout=2s", "--").duration("timeout") == 2.0
    with pytest.raises(FlagError, match='unexpected argument "--timeout=3s"'):
        parse("--", "--timeout=3s")
    fs = FlagSet("tool", positional=True)
    fs.string("name", "", "name")
    flags = fs.parse(["--name", "a", "--", "--name", "b"])
    assert flags.string("name") == "a"
    assert flags.args == ("--name", "b")


def test_a_lone_dash_is_an_argument() -> None:
    with pytest.raises(FlagError, match='unexpected argument "-"'):
        parse("-")


def test_a_value_may_start_with_a_dash() -> None:
    assert parse("--kubeconfig", "-weird").string("kubeconfig") == "-weird"
    assert parse("--max-entries", "-5").integer("max-entries") == -5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--foo"], "flag provided but not defined: -foo"),
        (["-foo=bar"], "flag provided but not defined: -foo"),
        (["--alsologtostderr"], "flag provided but not defined: -alsologtostderr"),
        (["--timeout=15"], 'invalid value "15" for flag -timeout: parse error'),
        (["--timeout", "x"], 'invalid value "x" for flag -timeout: parse error'),
        (["--timeout"], "flag needs an argument: -timeout"),
        (["--worker-threads=-1"], 'invalid value "-1" for flag -worker-threads: parse error'),
        (["--max-entries=1.5"], 'invalid value "1.5" for flag -max-entries: parse error'),
        (
            ["--max-entries=9223372036854775808"],
            'invalid value "9223372036854775808" for flag -max-entries: value out of range',
        ),
        (["--kube-api-qps=fast"], 'invalid value "fast" for flag -kube-api-qps: parse error'),
        (
            ["--leader-election-labels=a=b"],
            'invalid value "a=b" for flag -leader-election-labels: malformed item in list of labels: a=b',
        ),
        (["---timeout=1s"], "bad flag syntax: ---timeout=1s"),
        (["-=1s"], "bad flag syntax: -=1s"),
    ],
)
def test_errors_use_go_s_wording_and_exit_2(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError) as err:
        parse(*argv)
    assert str(err.value) == message
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("300us", 0.0003),
        ("1µs", 1e-6),
        ("1μs", 1e-6),
        ("100ns", 1e-7),
        ("-1s", -1.0),
        ("+5s", 5.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("0s", 0.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1h1m1s1ms", 3661.001),
    ],
)
def test_durations_parse_like_time_parseduration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse(f"--timeout={text}").duration("timeout") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("15", 'time: missing unit in duration "15"'),
        ("1.5", 'time: missing unit in duration "1.5"'),
        ("", 'time: invalid duration ""'),
        ("s", 'time: invalid duration "s"'),
        (".s", 'time: invalid duration ".s"'),
        ("-", 'time: invalid duration "-"'),
        ("10x", 'time: unknown unit "x" in duration "10x"'),
        ("10S", 'time: unknown unit "S" in duration "10S"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        (" 1s", 'time: invalid duration " 1s"'),
    ],
)
def test_bad_durations_are_time_parseduration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10", 10),
        ("-7", -7),
        ("+7", 7),
        ("0x1f", 31),
        ("0X1F", 31),
        ("0o17", 15),
        ("017", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("0x_ff", 255),
        ("0", 0),
        ("9223372036854775807", 2**63 - 1),
    ],
)
def test_ints_accept_go_literal_forms(text: str, value: int) -> None:
    assert parse_int(text) == value
    assert parse(f"--max-entries={text}").integer("max-entries") == value


@pytest.mark.parametrize("text", ["", "09", "1__0", "_1", "1_", "0x", "1e3", " 1", "\u0661", "--1", "0x1g"])
def test_bad_ints_are_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="parse error"):
        parse_int(text)


def test_unsigned_ints() -> None:
    assert parse("--worker-threads=0x10").unsigned("worker-threads") == 16
    assert parse_int("18446744073709551615", unsigned=True) == 2**64 - 1
    for text in ("+1", "-1"):
        with pytest.raises(ValueError):
            parse_int(text, unsigned=True)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5.0),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("-1.25", -1.25),
        ("0x1p-2", 0.25),
        ("Inf", math.inf),
    ],
)
def test_floats_parse_like_strconv_parsefloat(text: str, value: float) -> None:
    assert parse_float(text) == value


def test_float_nan_and_errors() -> None:
    assert math.isnan(parse_float("NaN"))
    for text in ("", "1.2.3", " 1", "0x1", "fast"):
        with pytest.raises(ValueError, match="parse error"):
            parse_float(text)
    with pytest.raises(ValueError, match="value out of range"):
        parse_float("1e400")


def test_leader_election_labels_map_merges_repeats() -> None:
    flags = parse("--leader-election-labels=a:1,b:2", "--leader-election-labels", "b:3,c:")
    assert flags.string_map("leader-election-labels") == {"a": "1", "b": "3", "c": ""}


def test_later_occurrences_win() -> None:
    assert parse("--timeout=1s", "-timeout", "2s").duration("timeout") == 2.0


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["-help=false"], ["--timeout=1s", "-h", "--foo"]])
def test_help_is_requested(argv: list[str]) -> None:
    with pytest.raises(HelpRequested):
        parse(*argv)


def test_usage_lists_every_flag_like_printdefaults() -> None:
    usage = attacher_flags().usage()
    lines = usage.splitlines()
    assert lines[0] == "Usage of csi-attacher:"
    for name in ("timeout", "csi-address", "leader-election-labels", "v", "vmodule", "automaxprocs"):
        assert f"  -{name}" in usage
    assert (
        '  -csi-address string\n    \tAddress of the CSI driver socket. (default "/run/csi/socket")' in usage
    )
    assert "  -timeout duration\n    \t" in usage and "(default 15s)" in usage
    assert "  -worker-threads uint\n    \tNumber of attacher worker threads (default 10)" in usage
    assert "  -leader-election-lease-duration duration\n" in usage
    qps = "QPS to use while communicating with the kubernetes apiserver. Defaults to 5.0."
    assert f"  -kube-api-qps float\n    \t{qps} (default 5)" in usage
    # A bool has no type word; a zero default is not shown; a `quoted` word names the value (UnquoteUsage).
    assert "  -leader-election\n    \tEnable leader election.\n" in usage
    assert "  -http-endpoint :8080\n" in usage
    assert "  -v int\n    \tnumber for the log level verbosity\n" in usage
    assert "  -resync duration\n    \tResync interval of the controller. (default 10m0s)" in usage
    names = [line.split()[0] for line in lines[1:] if line.startswith("  -")]
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (15, "15s"),
        (300, "5m0s"),
        (600, "10m0s"),
        (3600, "1h0m0s"),
        (90, "1m30s"),
        (1.5, "1.5s"),
        (0.5, "500ms"),
        (0.0003, "300µs"),
        (1e-7, "100ns"),
        (-1, "-1s"),
        (5400, "1h30m0s"),
    ],
)
def test_durations_print_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5.0, "5"),
        (0.25, "0.25"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1e-8, "1e-08"),
        (0.001, "0.001"),
        (9.999999999999999e-06, "9.999999999999999e-06"),
        (1795391681.86, "1.79539168186e+09"),
        (-2.5, "-2.5"),
        (2.0**64 - 1, "1.8446744073709552e+19"),
        (math.inf, "+Inf"),
        (0.0, "0"),
        (600.0, "600"),
    ],
)
def test_floats_print_like_go(value: float, text: str) -> None:
    assert format_float(value) == text


def test_a_flag_cannot_be_defined_twice() -> None:
    fs = attacher_flags()
    with pytest.raises(ValueError, match="redefined: timeout"):
        fs.duration("timeout", 1.0, "again")


def test_typed_getters_check_the_kind() -> None:
    flags = parse()
    with pytest.raises(TypeError):
        flags.string("timeout")
    with pytest.raises(KeyError):
        flags.string("no-such-flag")


def test_check_http_flags_refuses_both_addresses() -> None:
    check_http_flags(parse("--http-endpoint=:8080"))
    check_http_flags(parse("--metrics-address=:8080"))
    with pytest.raises(ConfigError) as err:
        check_http_flags(parse("--http-endpoint=:8080", "--metrics-address=:8081"))
    assert err.value.exit_code == 1
    assert not isinstance(err.value, FlagError)


def test_apply_logging_flags_configures_and_warns_about_unimplemented_and_deprecated() -> None:
    out = io.StringIO()
    flags = parse(
        "--v=3", "--logging-format=json", "--vmodule=foo=5", "--metrics-address=:8080", "--automaxprocs"
    )
    try:
        apply_logging_flags(flags, stream=out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        configure()
    by_msg = {(line["msg"], line["flag"]) for line in lines}
    assert ("flag accepted but not implemented yet", "--vmodule") in by_msg
    assert ("flag is deprecated", "--metrics-address") in by_msg
    assert all(line["level"] == "warning" for line in lines)
    assert len(lines) == 2  # --automaxprocs is accepted quietly


def test_apply_logging_flags_rejects_an_unknown_format() -> None:
    with pytest.raises(ConfigError, match='format: Invalid value: "yaml": Unsupported log format'):
        apply_logging_flags(parse("--logging-format=yaml"), stream=io.StringIO())
