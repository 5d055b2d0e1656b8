"""Output formats of flows and other answers: compact, dict, table, jsonpb (Hubble's
printer) and cilium monitor lines."""
