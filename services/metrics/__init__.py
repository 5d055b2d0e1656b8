"""webb metrics."""
