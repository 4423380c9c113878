"""signal package."""
