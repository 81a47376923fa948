"""One set of fixtures for tests/ and examples/: tests/suite_fixtures.py (a real
PostgreSQL, a fresh migrated database per test, `taskworker serve` as a subprocess).

tests/ goes on sys.path so that the fixtures module and the helpers the tests import
(pgserver, proc, invariants) are found from either folder. pytest reads
`pytest_plugins` only in the rootdir's conftest, hence this file at the root. (Not
named `fixtures`: pytest would take that name for its own `_pytest.fixtures`.)
"""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

pytest_plugins = ["suite_fixtures"]
