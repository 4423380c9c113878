"""ice package."""
