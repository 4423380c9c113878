"""Command-line interface (placeholder, filled in by the foundation work)."""


def main() -> int:
    return 0
