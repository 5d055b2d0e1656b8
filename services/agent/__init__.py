"""webb agent."""
