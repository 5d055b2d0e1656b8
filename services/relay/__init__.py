"""webb relay."""
