"""--bpf-ct-timeout-regular-any and --bpf-ct-timeout-regular-tcp-syn: compiled into the
datapath as signed nanoseconds, so values outside 1 ns .. ~292 years (and inf/nan) are
refused with a clear message instead of a loader crash, a compile error or a negative
lifetime (every UDP packet, every SYN a new flow)."""
from __future__ import annotations

import pytest

from webb_agent.main import parse_args

FLAGS = {"--bpf-ct-timeout-regular-any": "ct_timeout_any",
         "--bpf-ct-timeout-regular-tcp-syn": "ct_timeout_syn"}


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag", FLAGS)
def test_the_lifetime_reaches_the_config(flag):
    field = FLAGS[flag]
    assert getattr(parse_args([]), field) == 60  # Cilium's defaults: 1 min each
    assert getattr(parse_args([flag, "2m30s"]), field) == 150
    assert getattr(parse_args([flag, "3"]), field) == 3
    other = next(f for f in FLAGS.values() if f != field)
    assert getattr(parse_args([flag, "3"]), other) == 60


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("value", ["0", "0s", "inf", "nan", "1e-10", "1e12", "9.3e9"])
def test_bad_lifetimes_are_refused(capsys, flag, value):
    err = refused(capsys, flag, value)
    assert f"{flag} must be between 1ns and 292 years" in err, err


@pytest.mark.parametrize("flag", FLAGS)
def test_garbage_is_an_invalid_duration(capsys, flag):
    assert "invalid duration '1x'" in refused(capsys, flag, "1x")
