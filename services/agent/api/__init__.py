"""The agent's gRPC services: Hubble's Observer and Peer, webb's FlowStream and Admin."""
