"""mitmproxy's log lines that quote what a peer sent, with what it sent left out.

Some of mitmproxy's log lines quote a server's bytes as they came: the data it sends past the
end of a response ("Unexpected data from server: b'...'"), a WebSocket ping's or pong's
payload, the details of an HTTP/2 protocol error (h2 quotes the header value it refused), and
the traceback of a connection handler that crashed (which may quote the event it choked on).
A server can echo a value there (the request's own, or a socket's), and the line goes to the
terminal and any log handler. So does urllib3's warning about a response head it cannot parse
(a token endpoint's, when the proxy mints an OAuth token): it quotes the header lines, which
may echo the request's Basic credential. The filter here keeps each line and says what it
left out; it runs only on the records of mitmproxy's connection handler and urllib3's
connections.
"""

from __future__ import annotations

import ast
import logging
import re
import traceback
import warnings
from collections.abc import Callable

LOGGER = "mitmproxy.proxy.server"  # where mitmproxy's layers log (proxy/server.py)
URLLIB3_LOGGER = "urllib3.connection"  # "Failed to parse headers (url=...): <the header lines>"
NOT_SHOWN = "not shown by vaultproxy"
_BYTES_LITERAL = r"b(?P<quote>['\"])(?:\\.|(?!(?P=quote)|\\).)*(?P=quote)"  # one way to match each character
_LITERAL = re.compile(_BYTES_LITERAL)
_QUOTING = re.compile(rf"(?s)(Unexpected data from server: |Received WebSocket p[io]ng from server \(payload: )({_BYTES_LITERAL})(\)?)\Z")
_HTTP2_KINDS = r"HTTP/2 protocol error|Invalid HTTP/2 (?:request|response) headers"
# The errors mitmproxy gives every stream of an HTTP/2 connection it closes (proxy/layers/http/_http2.py).
_CONNECTION_ERROR = re.compile(rf"(?s)((?:{_HTTP2_KINDS}|HTTP/2 connection closed): )(.+)\Z")
_ERROR_CODE = re.compile(r"error_code:ErrorCodes\.[A-Z_]+")
_HTTP2_ERROR = re.compile(rf"(?s)(\S+: (?:{_HTTP2_KINDS}): )(.+)\Z")


class LeaveOutPeerBytes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and (shorter := left_out(record.msg)) is not None:
            record.msg, record.args = shorter, None
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = without_exception_text(record.getMessage(), record.exc_info[1]), None
            record.exc_info, record.exc_text = None, None
        return True


def without_exception_text(message: str, error: BaseException) -> str:
    """A crash's line and traceback without the exception's own text, which may quote what a
    peer sent (bytes, or a string such as a close reason): its type and where it was raised stay.
    In the message, not the record's exc_info: mitmproxy's formatter would format that itself."""
    text = str(error)
    frames = "".join(traceback.format_tb(error.__traceback__))
    shown = message.replace(text, f"<{NOT_SHOWN}>") if text else message
    return f"{shown}\nTraceback (most recent call last):\n{frames}{type(error).__name__}: <{NOT_SHOWN}>"


def left_out(message: str) -> str | None:
    """`message` with the peer's bytes left out, or None when it quotes none."""
    if quoting := _QUOTING.match(message):
        return f"{quoting[1]}{quoted_length(quoting[2])} bytes, {NOT_SHOWN}{quoting[4]}"
    if error := _HTTP2_ERROR.match(message):
        return details_left_out(error)
    return None


def details_left_out(error: re.Match[str]) -> str:
    """An HTTP/2 error (`_HTTP2_ERROR`, `_CONNECTION_ERROR`) with its details left out, but a
    GOAWAY's error code (a name h2 knows)."""
    code = _ERROR_CODE.search(error[2])
    return f"{error[1]}{len(error[2])} characters of details, {NOT_SHOWN}" + (f" ({code[0]})" if code else "")


def cleaned_literals(message: str, clean: Callable[[bytes], bytes]) -> str:
    """`message` with each bytes literal in it cleaned as the bytes it stands for, by `clean`
    (which returns its argument when nothing changed); `message` itself when none changed.
    repr escapes a value's non-ASCII bytes and its quotes, spellings no check of the text
    recognises. A literal cut short is left as it is: the check of the text still sees it."""

    def cleaned(literal: re.Match[str]) -> str:
        try:
            with warnings.catch_warnings(action="ignore"):  # an unknown escape (b'\q') warns
                data = ast.literal_eval(literal[0])
        except (ValueError, SyntaxError):
            return literal[0]
        out = clean(data)
        return literal[0] if out is data else repr(out)

    result = _LITERAL.sub(cleaned, message)
    return message if result == message else result


def connection_error(message: str) -> re.Match[str] | None:
    """`message` as an HTTP/2 connection's error, if it is one. mitmproxy gives such an error to
    every stream on the connection, so what it quotes of the server may be another stream's
    value, in forms no check of one stream's values finds: a repr cut at 200 characters, bare
    digits, the hex of a GOAWAY's first 20 bytes of debug data."""
    return _CONNECTION_ERROR.match(message)


def quoted_length(literal: str) -> int:
    """How many bytes a `repr(bytes)` literal stands for (each escape is one)."""
    return len(re.findall(r"\\x[0-9a-f]{2}|\\.|.", literal[2:-1], re.DOTALL))


_FILTER = LeaveOutPeerBytes()


def install() -> None:
    """Idempotent: a script reload installs it again."""
    for name in (LOGGER, URLLIB3_LOGGER):
        logging.getLogger(name).addFilter(_FILTER)
