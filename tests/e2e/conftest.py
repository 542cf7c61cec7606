"""The e2e steps share one booted container and run in file order; once a step fails, the
later steps are reported as skipped because of it instead of failing with confusing errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

_failed_step: dict[str, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("step") and report.failed:
        _failed_step.setdefault(str(item.path), item.name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("step") and str(item.path) in _failed_step:
        pytest.skip(f"an earlier step failed: {_failed_step[str(item.path)]}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "step: an ordered step of one e2e scenario")
