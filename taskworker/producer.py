"""Placeholder: enqueue from application code arrives with part 4."""
