import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kubelet: a real one-node Kubernetes cluster (kubelet, containerd, CNI "
        "plugins; tests/k8s_node.py); `pytest -m kubelet` runs them alone")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (eBPF, network namespaces); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
