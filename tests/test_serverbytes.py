"""mitmproxy's log lines that quote a server's bytes (vaultproxy/serverbytes.py), without I/O."""

from __future__ import annotations

import logging
import threading

import pytest

from vaultproxy import serverbytes

SECRET = b"sk_live_" + b"Zq9Log"  # split: a traceback shows this file's source lines


def filtered(message: str) -> str:
    record = logging.LogRecord(serverbytes.LOGGER, logging.INFO, __file__, 1, message, None, None)
    assert serverbytes.LeaveOutPeerBytes().filter(record)
    return record.getMessage()


@pytest.mark.parametrize(("message", "expected"), [
    ("Unexpected data from server: b'echo sk_live_Zq9Log'", "Unexpected data from server: 19 bytes, not shown by vaultproxy"),
    ("Unexpected data from server: b'\\r\\n\\x00\\''", "Unexpected data from server: 4 bytes, not shown by vaultproxy"),
    ('Received WebSocket ping from server (payload: b"it\'s sk_live_Zq9Log")',
     "Received WebSocket ping from server (payload: 19 bytes, not shown by vaultproxy)"),
    ("Received WebSocket pong from server (payload: b'')", "Received WebSocket pong from server (payload: 0 bytes, not shown by vaultproxy)"),
    # h2 quotes the header value it refused; int() the status it could not read.
    ("127.0.0.1:8443: HTTP/2 protocol error: Received header value surrounded by whitespace b' Bearer sk_live_Zq9Log '",
     "127.0.0.1:8443: HTTP/2 protocol error: 73 characters of details, not shown by vaultproxy"),
    ("[::1]:8443: Invalid HTTP/2 response headers: invalid literal for int() with base 10: b'sk_live_Zq9Log'",
     "[::1]:8443: Invalid HTTP/2 response headers: 57 characters of details, not shown by vaultproxy"),
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


def test_a_crash_traceback_quotes_no_bytes() -> None:
    """A connection handler that crashed logs its exception, which may quote the event it
    choked on, with a server's bytes in it."""
    event = f"ResponseData(data=bytearray({b'echo ' + SECRET!r}), raw={b'it' + bytes([39]) + b's ' + SECRET!r})"
    try:
        raise AssertionError(f"Unexpected event: {event}")  # its source line, shown in the traceback, holds no value
    except AssertionError as e:
        record = logging.LogRecord(serverbytes.LOGGER, logging.ERROR, __file__, 1, f"connection handler has crashed: {e}", None, (type(e), e, e.__traceback__))
    assert serverbytes.LeaveOutPeerBytes().filter(record)
    logged = logging.Formatter().format(record)
    assert SECRET.decode() not in logged and "Traceback (most recent call last)" in logged
    assert logged.startswith("connection handler has crashed: <not shown by vaultproxy>\n")
    assert logged.endswith("\nAssertionError: <not shown by vaultproxy>") and "test_a_crash_traceback_quotes_no_bytes" in logged


def test_urllib3s_warning_about_a_head_it_cannot_parse_quotes_none_of_it() -> None:
    """A token endpoint's answer with a broken head makes urllib3 log the header lines it could
    not parse, where the server may echo the request's Basic credential."""
    from urllib3.exceptions import HeaderParsingError

    unparsed = "X-Echo-Authorization: Basic " + SECRET.decode() + "\r\n"
    serverbytes.install()
    logger = logging.getLogger(serverbytes.URLLIB3_LOGGER)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        error = HeaderParsingError(defects=[], unparsed_data=unparsed)
        logger.warning("Failed to parse headers (url=%s): %s", "http://127.0.0.1:9/token", error, exc_info=(type(error), error, None))
    finally:
        logger.removeHandler(handler)
    (record,) = records
    logged = logging.Formatter().format(record)
    assert SECRET.decode() not in logged and logged.startswith("Failed to parse headers (url=http://127.0.0.1:9/token): <not shown")


def test_a_run_of_backslashes_does_not_stall_the_filter() -> None:
    """A server's bytes end up in the text the filter reads: a regular expression that can
    match them in many ways would take exponential time, on the event loop of every client."""
    done = threading.Event()
    worker = threading.Thread(target=lambda: (filtered("Unexpected data from server: b'" + "\\" * 64), done.set()), daemon=True)
    worker.start()
    assert done.wait(5), "the filter is still matching 64 backslashes after 5 s"


def test_bytes_literals_are_cleaned_as_the_bytes_they_stand_for() -> None:
    """repr escapes a value's non-ASCII bytes and its quotes: the check sees the bytes."""
    value = "pw'\"é\\x"
    message = f"Bad HTTP response line: {('-ERR ' + value).encode()!r} and {b'harmless'!r}"
    shown = serverbytes.cleaned_literals(message, lambda data: data.replace(value.encode(), b"<<vault:k>>"))
    assert shown == "Bad HTTP response line: b'-ERR <<vault:k>>' and b'harmless'"
    untouched = serverbytes.cleaned_literals(message, lambda data: data)
    assert untouched is message
    cut_short = "Invalid header line: b'abc\\"  # no closing quote: left to the check of the text
    assert serverbytes.cleaned_literals(cut_short, lambda data: b"changed") is cut_short
