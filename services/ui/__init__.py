"""webb ui."""
