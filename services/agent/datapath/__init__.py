"""The eBPF side of the agent: load bpf/ programs, attach them, read their events."""
