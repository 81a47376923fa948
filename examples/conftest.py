"""Lets the examples' tests use the main suite's fixtures (tests/conftest.py): a
real PostgreSQL, a fresh migrated database per test, `taskworker serve` run as a
subprocess (`serve`), and `proc.run_cli`.

tests/conftest.py is loaded under another module name (pytest already imports it
as `conftest`) and its fixtures are re-exported here; tests/ goes on sys.path for
the helpers it imports (pgserver, proc), which the examples' tests use too.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

_spec = importlib.util.spec_from_file_location("taskworker_test_fixtures", TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

pg_base_url = _fixtures.pg_base_url
template_db = _fixtures.template_db
empty_db_url = _fixtures.empty_db_url
db_url = _fixtures.db_url
db = _fixtures.db
serve = _fixtures.serve
clean_env = _fixtures.clean_env
