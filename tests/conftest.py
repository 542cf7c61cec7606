"""The suite's fixtures. Helpers live in tests/support/ (`from support.tree import Tree`):
a test never imports a conftest, because tests/e2e/conftest.py would shadow this one.

pyproject.toml's `pythonpath` puts the checkout and tests/ on sys.path, so
`python3 -m pytest tests` collects from any directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tree import Tree, make_tree, require_tool


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    require_tool("update-ca-certificates")
    yield make_tree(tmp_path / "device")


@pytest.fixture(autouse=True)
def _quiet_logging() -> Iterator[None]:
    from edge_certd.sync import journal as events

    events.setup_logging(to_journal=False)
    yield
