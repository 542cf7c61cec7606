"""What edge-certd hands python-systemd's JournalHandler: each message once, as MESSAGE, with
its fields. The handler is the real one that `setup_logging` builds; only its sender (the
`sender_function` python-systemd takes for this) collects instead of writing to a socket,
so this machine's journal is not touched."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from edge_certd.sync import journal

pytest.importorskip("systemd.journal")

Sent = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def sent() -> Iterator[Sent]:
    found: Sent = []
    handler = journal.setup_logging(to_journal=True)

    def collect(message: str, /, **fields: Any) -> None:
        found.append((message, fields))

    handler.send = collect  # type: ignore[attr-defined]  # python-systemd's sender_function
    yield found
    journal.setup_logging(to_journal=False)


def test_an_event_is_stored_once_with_its_fields_and_no_code_args(sent: Sent) -> None:
    text = "/srv/drop/100% root %s.pem: rejected"  # a `%` in a file name is only text
    journal.emit("rejected", text, logging.WARNING, sha256="ab" * 32, source="/srv/drop/x.pem")
    ((message, fields),) = sent
    assert message == text
    assert "CODE_ARGS" not in fields
    assert fields["MESSAGE_ID"] == journal.MESSAGE_IDS["rejected"]
    assert fields["CERT_SHA256"] == "ab" * 32 and fields["SOURCE_PATH"] == "/srv/drop/x.pem"


def test_a_message_passed_as_an_argument_is_stored_twice(sent: Sent) -> None:
    """The failure the test above guards against: python-systemd copies a record's args into
    CODE_ARGS, so `log("%s", message)` puts every message in the journal a second time."""
    journal.log.warning("%s", "the whole message")
    ((message, fields),) = sent
    assert message == "the whole message"
    assert "the whole message" in fields["CODE_ARGS"]
