"""What the agent keeps: the flow ring, the history on disk, endpoints and identities."""
