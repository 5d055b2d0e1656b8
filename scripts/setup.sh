#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (run as root): system packages,
# kernel headers for bcc, the project venv, Python dependencies and protobuf stubs.
# Each step checks first, so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=$ROOT/.venv
STAMPS=$ROOT/.stamps
mkdir -p "$STAMPS"

APT_PKGS=(python3-bpfcc linux-headers-amd64 iproute2 procps iputils-ping dnsmasq-base curl prometheus chromium)
# The one-node Kubernetes cluster of the kubelet tests (tests/k8s_node.py): the container
# runtime, the CNI plugins (bridge, ptp, host-local, loopback in /usr/lib/cni), what
# kube-proxy and the kubelet call (iptables, conntrack), and what the offline images
# are made of (scripts/build_images.py: debootstrap for root filesystems,
# busybox-static for the small test image; gcc and a static libc for pause.c).
APT_PKGS+=(containerd runc containernetworking-plugins iptables conntrack
           debootstrap busybox-static gcc libc6-dev)
# The agent's C accelerators (scripts/build_ext.py): a compiler and Python's headers.
APT_PKGS+=(python3-dev)
[ -n "${WEBB_EXTRA_APT:-}" ] && APT_PKGS+=($WEBB_EXTRA_APT)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  # Tests start their own Prometheus on loopback; a system one must not hold :9090.
  # Likewise the tests start their own containerd (own socket, root and state); the
  # package's service, where systemd starts it, would only take memory.
  if command -v systemctl >/dev/null; then
    for svc in prometheus containerd; do
      [ "$svc" = containerd ] && command -v dockerd >/dev/null && continue  # Docker's own
      if systemctl is-active -q "$svc" 2>/dev/null; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
      fi
    done
  fi
fi

# bcc compiles against /lib/modules/$(uname -r)/build. When the distribution has no
# headers for the running kernel, point it at Debian's generic ones: the programs use
# only stable UAPI structures (see docs/agent.md).
KDIR=/lib/modules/$(uname -r)
if [ ! -e "$KDIR/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$hdr" ]; then
    echo "setup: linking $KDIR/build -> $hdr"
    mkdir -p "$KDIR"
    ln -sfn "$hdr" "$KDIR/build"
    [ -n "$common" ] && ln -sfn "$common" "$KDIR/source"
  fi
fi

# The venv comes from the machine's real interpreter, not a pyenv shim, so that
# background processes have the PID we think they have.
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(python3 -c 'import sys; print(sys.executable)')
  echo "setup: creating venv from $PY"
  "$PY" -m venv "$VENV"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Debian's bcc lives in dist-packages; link just that package so nothing else leaks in.
if [ ! -e "$SITE/bcc" ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$SITE/bcc"
fi

deps_hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMPS/deps" 2>/dev/null)" != "$deps_hash" ]; then
  echo "setup: installing Python dependencies"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e ".[test]"
  echo "$deps_hash" > "$STAMPS/deps"
fi

# The agent's C accelerators, next to their sources (rebuilt when a source changes).
"$VENV/bin/python" scripts/build_ext.py

proto_hash=$(cat proto/*/*.proto scripts/gen_proto.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMPS/proto" 2>/dev/null)" != "$proto_hash" ] || [ ! -e webb/api/flow/flow_pb2.py ]; then
  echo "setup: generating protobuf stubs"
  "$VENV/bin/python" scripts/gen_proto.py
  echo "$proto_hash" > "$STAMPS/proto"
fi
# A real Kubernetes API server and controller manager for tests/k8s_cluster.py, built
# once per machine outside the repository (a few minutes the first time; then instant).
# A failed build must not stop the rest of the suite: the Kubernetes tests then fail
# by themselves, naming scripts/build_kube.sh and its log.
scripts/build_kube.sh || echo "setup: WARNING: building Kubernetes failed (see the log above); the Kubernetes tests will fail" >&2
# The kubelet tests' images (tests/k8s_node.py), built offline from images/*/Dockerfile
# and cached per machine outside the repository: the first time takes ~15 minutes on 2
# busy vCPUs (debootstrap, apt, pip); after a change to webb's code only the steps from
# its COPY on run again (a few minutes); unchanged, nothing.
"$VENV/bin/python" scripts/build_images.py >/dev/null \
  || echo "setup: WARNING: building the test images failed (see above); the kubelet tests will fail" >&2

"$VENV/bin/python" -c 'import bcc, grpc, webb.api.flow.flow_pb2' || { echo "setup: venv check failed" >&2; exit 1; }
