"""Self-supervised objectives."""
