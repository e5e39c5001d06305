"""mitmproxy's log lines that quote a server's bytes (vaultproxy/serverbytes.py), without I/O."""

from __future__ import annotations

import logging

import pytest

from vaultproxy import serverbytes


def filtered(message: str) -> str:
    record = logging.LogRecord(serverbytes.LOGGER, logging.INFO, __file__, 1, message, None, None)
    assert serverbytes.LeaveOutServerBytes().filter(record)
    return record.getMessage()


@pytest.mark.parametrize(("message", "expected"), [
    ("Unexpected data from server: b'echo sk_live_Zq9Log'", "Unexpected data from server: 19 bytes, not shown by vaultproxy"),
    ("Unexpected data from server: b'\\r\\n\\x00\\''", "Unexpected data from server: 4 bytes, not shown by vaultproxy"),
    ('Received WebSocket ping from server (payload: b"it\'s sk_live_Zq9Log")',
     "Received WebSocket ping from server (payload: 19 bytes, not shown by vaultproxy)"),
    ("Received WebSocket pong from server (payload: b'')", "Received WebSocket pong from server (payload: 0 bytes, not shown by vaultproxy)"),
])
def test_a_servers_bytes_are_left_out(message: str, expected: str) -> None:
    assert filtered(message) == expected


@pytest.mark.parametrize("message", [
    "Received WebSocket ping from client (payload: b'the client holds placeholders only')",
    "server connect 127.0.0.1:8081",
    "Unexpected data from server: not a bytes literal",
])
def test_other_lines_are_kept(message: str) -> None:
    assert filtered(message) == message
