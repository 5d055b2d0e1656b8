"""webb cli."""
