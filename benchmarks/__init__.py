"""Benchmarks of taskworker against pgqueuer and raw SQL (pgbench), in one run.

Entry point: `python -m benchmarks.run` (or `tox -e bench`). See run.py for the
options and RESULTS.md for recorded figures. Nothing here is imported by
taskworker or by the tests.
"""
