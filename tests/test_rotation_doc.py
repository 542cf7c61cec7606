"""docs/ROTATION.md's PromQL is real: each query of its table runs in promtool against
docs/alerts.yml's recording rules and a small fleet, and gives what the runbook says it gives;
every query in the runbook's text is one of the table's.

promtool comes from Debian's `prometheus` package.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support.tree import require_tool

REPO = Path(__file__).resolve().parent.parent
RUNBOOK = REPO / "docs" / "ROTATION.md"
RULES = REPO / "docs" / "alerts.yml"
A, B = "a" * 64, "b" * 64


def table_queries(text: str) -> dict[str, str]:
    """question -> PromQL, from the table under "## The queries at a glance"."""
    section = text.split("## The queries at a glance", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| `([^`]+)` \|$", section, re.MULTILINE)
    return {question: query for question, query in rows}


def text_queries(text: str) -> list[str]:
    """Each query line of the runbook's ```promql blocks, its comment cut off."""
    blocks = re.findall(r"^ *```promql\n(.*?)^ *```$", text, re.DOTALL | re.MULTILINE)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def fleet(queries: dict[str, str]) -> dict[str, object]:
    """Three devices in the middle of a rotation: dev1 and dev2 trust A and B, dev3 only A
    (it was off during step 2); dev1's gateway still anchors at A, and dev1 holds A for it."""
    series = []
    for device, roots in (("dev1", (A, B)), ("dev2", (A, B)), ("dev3", (A,))):
        labels = f'instance="{device}",job="node"'
        series.append({"series": f'edge_certd_info{{{labels},version="0.1.0"}}', "values": "1+0x10"})
        series += [
            {"series": f'edge_certd_ca_trusted{{{labels},sha256="{r}"}}', "values": "1+0x10"} for r in roots
        ]
        anchor = A if device in ("dev1", "dev3") else B
        series.append(
            {
                "series": f'edge_certd_gateway_anchor_info{{{labels},gateway="gw1:8883",sha256="{anchor}"}}',
                "values": "1+0x10",
            }
        )
    held = f'edge_certd_ca_held_for_gateway{{instance="dev1",job="node",sha256="{A}"}}'
    series.append({"series": held, "values": "1765497600+0x10"})

    def query(question: str, root: str) -> str:
        return queries[question].replace("<X>", root).replace("<A>", A).replace("<B>", B)

    expected = [
        (query("how many devices are up", ""), [{"labels": "edge_certd:devices_up:count", "value": 3}]),
        (
            query("how many trust root X", B),
            [{"labels": f'edge_certd:root_devices:count{{sha256="{B}"}}', "value": 2}],
        ),
        (
            query("which devices lack B", B),
            [{"labels": 'edge_certd_info{instance="dev3",job="node",version="0.1.0"}', "value": 1}],
        ),
        (
            query("which gateways still anchor at A, seen by how many devices", A),
            [{"labels": '{gateway="gw1:8883"}', "value": 2}],
        ),
        (
            query("which devices hold a root for their gateway, until when", A),
            [{"labels": held, "value": 1765497600}],
        ),
    ]
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": expr, "eval_time": "5m", "exp_samples": samples} for expr, samples in expected
                ],
            }
        ],
    }


def promtool_test(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "rotation_test.yml"
    spec.write_text(yaml.safe_dump(fleet(table_queries(text)), sort_keys=False))
    return subprocess.run(
        [require_tool("promtool"), "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )


def test_the_runbooks_queries_give_what_it_says_on_a_fleet_mid_rotation(tmp_path: Path) -> None:
    r = promtool_test(RUNBOOK.read_text(), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("right", "wrong"),
    [
        ("unless on (instance)", "unless on (job)"),  # every device would look ready
        ("count by (gateway)", "count by (instance)"),
    ],
)
def test_a_wrong_query_in_the_runbook_fails_the_check(tmp_path: Path, right: str, wrong: str) -> None:
    text = RUNBOOK.read_text()
    assert right in text
    r = promtool_test(text.replace(right, wrong), tmp_path)
    assert r.returncode != 0, r.stdout
    assert "got:" in r.stdout + r.stderr  # a wrong answer, not a file promtool could not read


def test_every_query_in_the_runbooks_text_is_one_of_its_table() -> None:
    text = RUNBOOK.read_text()
    table = {re.sub(r"<[ABX]>", "<root>", q) for q in table_queries(text).values()}
    assert len(table) == 5
    in_text = text_queries(text)
    assert len(in_text) >= 6
    for query in in_text:
        assert re.sub(r"<[ABX]>", "<root>", query) in table, query
