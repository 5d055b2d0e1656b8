"""webb-agent's Kubernetes and TLS flags: bad combinations are refused with a clear
message before anything starts."""
from __future__ import annotations

import pytest

from webb.tls import TLSConfigError, server_credentials
from webb_agent.main import parse_args


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


def test_k8s_flags_reach_the_config():
    cfg = parse_args(["--k8s", "--kubeconfig", "/etc/kube.conf", "--cluster-name", "prod",
                      "--identity-gc-grace", "60", "--no-install-crds"])
    assert cfg.k8s and cfg.kubeconfig == "/etc/kube.conf" and cfg.cluster_name == "prod"
    assert cfg.identity_gc_grace == 60 and not cfg.install_crds
    # Go durations, as the chart's agent.identityGC values are written
    cfg = parse_args(["--k8s", "--identity-gc-interval", "1m30s", "--identity-gc-grace", "15m"])
    assert (cfg.identity_gc_interval, cfg.identity_gc_grace) == (90, 900)


def test_bad_identity_gc_durations_are_refused(capsys):
    assert "invalid duration '15x'" in refused(capsys, "--k8s", "--identity-gc-grace", "15x")
    assert "must be positive" in refused(capsys, "--k8s", "--identity-gc-interval", "0s")


def test_two_sources_of_endpoints_are_refused(capsys):
    assert "--k8s and --endpoints" in refused(capsys, "--k8s", "--endpoints", "e.yaml")


def test_tls_flags_are_checked(capsys, tmp_path):
    assert "--tls-cert and --tls-key go together" in refused(capsys, "--tls-cert", "x.pem")
    assert "--tls-client-ca needs" in refused(capsys, "--tls-client-ca", "ca.pem")
    missing = str(tmp_path / "none.pem")
    assert "cannot read" in refused(capsys, "--tls-cert", missing, "--tls-key", missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert "is not a PEM file" in refused(capsys, "--tls-cert", str(junk), "--tls-key", str(junk))


def test_plaintext_without_tls_flags():
    assert server_credentials("", "") is None
    with pytest.raises(TLSConfigError):
        server_credentials("", "key.pem")


def test_identity_file_does_not_mix_with_k8s(capsys):
    assert "--identity-file" in refused(capsys, "--k8s", "--identity-file", "/tmp/ids.json")
