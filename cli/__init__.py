"""Shim package so that `python -m cli.aisp` works from the repository root."""
