"""Helpers shared by tests (reference implementations, multi-process scripts)."""
