"""--bpf-ct-timeout-regular-any: compiled into the datapath as signed nanoseconds, so
values outside 1 ns .. ~292 years (and inf/nan) are refused with a clear message instead
of a loader crash, a compile error or a negative lifetime (every UDP packet new)."""
from __future__ import annotations

import pytest

from webb_agent.main import parse_args


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


def test_the_lifetime_reaches_the_config():
    assert parse_args([]).ct_timeout_any == 60
    assert parse_args(["--bpf-ct-timeout-regular-any", "2m30s"]).ct_timeout_any == 150
    assert parse_args(["--bpf-ct-timeout-regular-any", "3"]).ct_timeout_any == 3


@pytest.mark.parametrize("value", ["0", "0s", "inf", "nan", "1e-10", "1e12", "9.3e9"])
def test_bad_lifetimes_are_refused(capsys, value):
    err = refused(capsys, "--bpf-ct-timeout-regular-any", value)
    assert "--bpf-ct-timeout-regular-any must be between 1ns and 292 years" in err, err


def test_garbage_is_an_invalid_duration(capsys):
    assert "invalid duration '1x'" in refused(capsys, "--bpf-ct-timeout-regular-any", "1x")
