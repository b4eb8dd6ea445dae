"""Shared helpers for op families (kernel generators)."""
