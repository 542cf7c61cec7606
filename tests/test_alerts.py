"""docs/alerts.yml is valid Prometheus, and its unit tests (tests/alerts_test.yml) pass.

promtool comes from Debian's `prometheus` package; in CI a missing promtool fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.tree import require_tool

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "docs" / "alerts.yml"
RULE_TESTS = REPO / "tests" / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, cwd=REPO)


def test_promtool_checks_the_rules() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 16 rules found" in r.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    rules = RULES.read_text()
    assert "< 14 * 86400" in rules
    (tmp_path / "docs" / "alerts.yml").write_text(rules.replace("< 14 * 86400", "< 7 * 86400"))
    (tmp_path / "tests" / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    r = promtool("test", "rules", str(tmp_path / "tests" / "alerts_test.yml"))
    assert r.returncode != 0, r.stdout
    assert "EdgeCertdCAExpiresWithin14Days" in r.stdout + r.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", ())}
    assert alerts == tested
    # Each recording rule (the fleet's readiness query) is checked by a promql_expr_test too.
    records = {rule["record"] for rule in rules if "record" in rule}
    queried = {case["expr"] for t in tests for case in t.get("promql_expr_test", ())}
    assert records and records <= queried
