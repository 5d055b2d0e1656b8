#!/bin/sh
# webb-agent's entrypoint: find kernel headers for bcc, then run the command.
#
# bcc compiles the eBPF programs against /lib/modules/$(uname -r)/build. The chart
# mounts the node's /lib/modules and /usr/src read-only, so a node with headers for its
# kernel (package linux-headers-$(uname -r)) is used as it is. Otherwise bcc is pointed
# (BCC_KERNEL_SOURCE) at the generic Debian headers shipped in this image: webb's
# programs use only stable UAPI structures and read kernel enums from BTF at run time,
# so they do not depend on the exact header version (docs/agent.md). Nothing is
# written to the host's mounts.
set -eu
MODULES=${WEBB_MODULES_DIR:-/lib/modules}
GENERIC=${WEBB_GENERIC_HEADERS:-/opt/webb/kernel-headers}
release=$(uname -r)

if [ -n "${BCC_KERNEL_SOURCE:-}" ]; then
  echo "webb-agent-entrypoint: kernel headers from BCC_KERNEL_SOURCE=$BCC_KERNEL_SOURCE" >&2
elif [ -d "$MODULES/$release/build/include" ]; then
  echo "webb-agent-entrypoint: kernel headers of the node at $MODULES/$release/build" >&2
elif [ -d "$GENERIC/include" ]; then
  export BCC_KERNEL_SOURCE="$GENERIC"
  echo "webb-agent-entrypoint: no headers for kernel $release on the node; using the image's generic headers $GENERIC" >&2
else
  echo "webb-agent-entrypoint: no kernel headers found for $release (mount /lib/modules and /usr/src from the node); bcc will try the kernel's own (CONFIG_IKHEADERS)" >&2
fi
exec "$@"
