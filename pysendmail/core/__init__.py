"""Shared, lean code: standard library only, safe for the submission path."""
