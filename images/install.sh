#!/bin/sh
# Installs webb into a virtual environment, the way every image does it:
#   install.sh SOURCE_DIR VENV_DIR [--system-site-packages]
# One wheel of the project (with its dependencies from PyPI), then the protobuf stubs:
# scripts/gen_proto.py writes them into SOURCE_DIR/webb/api/<package>/, which the wheel
# does not carry (they are generated, and pyproject.toml lists only webb.api), so they
# are copied into the installed webb/api/. grpcio-tools is needed only for that step
# and is removed afterwards. tests/unit/test_images.py runs this script outside Docker.
set -eu
SRC=$1
VENV=$2
SITE_FLAG=${3:-}
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv $SITE_FLAG "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check --no-input"
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT

$PIP wheel --no-deps --wheel-dir "$WHEELS" "$SRC"
set -- "$WHEELS"/webb-*.whl
[ "$#" -eq 1 ] && [ -f "$1" ] || { echo "install.sh: expected one webb wheel, got: $*" >&2; exit 1; }
$PIP install "$1"

$PIP install "grpcio-tools>=1.60"
"$VENV/bin/python" "$SRC/scripts/gen_proto.py"
API=$("$VENV/bin/python" -I -c 'import os, webb.api; print(os.path.dirname(webb.api.__file__))')
for pkg in "$SRC"/webb/api/*/; do
  name=$(basename "$pkg")
  [ "$name" = "__pycache__" ] && continue
  rm -rf "${API:?}/$name"
  cp -r "$pkg" "$API/$name"
done
$PIP uninstall -y grpcio-tools
"$VENV/bin/python" -I -c 'import webb.api.flow.flow_pb2, webb.api.observer.observer_pb2_grpc, webb.api.peer.peer_pb2_grpc'
