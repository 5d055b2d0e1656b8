"""Kubernetes mode of the agent (webb-agent --k8s): see watcher.py and docs/kubernetes.md."""
