"""Leader election among the nodes."""
