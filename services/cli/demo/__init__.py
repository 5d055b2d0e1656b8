"""`webb demo`: the bookinfo application on a cluster of network namespaces."""
