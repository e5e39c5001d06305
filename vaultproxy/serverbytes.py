"""mitmproxy's log lines that quote what a peer sent, with what it sent left out.

Some of mitmproxy's log lines quote a server's bytes as they came: the data it sends past the
end of a response ("Unexpected data from server: b'...'"), a WebSocket ping's or pong's
payload, the details of an HTTP/2 protocol error (h2 quotes the header value it refused), and
the traceback of a connection handler that crashed (which may quote the event it choked on).
A server can echo a value there (the request's own, or a socket's), and the line goes to the
terminal and any log handler. The filter here keeps each line and says how much it left out;
it runs only on the records of mitmproxy's connection handler.
"""

from __future__ import annotations

import logging
import re

LOGGER = "mitmproxy.proxy.server"  # where mitmproxy's layers log (proxy/server.py)
NOT_SHOWN = "not shown by vaultproxy"
_BYTES_LITERAL = r"b(?P<quote>['\"])(?:\\.|(?!(?P=quote)).)*(?P=quote)"
_QUOTING = re.compile(rf"(?s)(Unexpected data from server: |Received WebSocket p[io]ng from server \(payload: )({_BYTES_LITERAL})(\)?)\Z")
_HTTP2_ERROR = re.compile(r"(?s)(\S+: (?:HTTP/2 protocol error|Invalid HTTP/2 (?:request|response) headers): )(.+)\Z")
_ANY_BYTES_LITERAL = re.compile(rf"(?s)(?P<array>bytearray\()?(?<!\w){_BYTES_LITERAL}(?(array)\))")


class LeaveOutPeerBytes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and (shorter := left_out(record.msg)) is not None:
            record.msg, record.args = shorter, None
        if record.exc_info:  # mitmproxy's formatter formats the exception itself: it goes in the message
            traceback = logging.Formatter().formatException(record.exc_info)
            record.msg, record.args = without_bytes(f"{record.getMessage()}\n{traceback}"), None
            record.exc_info, record.exc_text = None, None
        return True


def left_out(message: str) -> str | None:
    """`message` with the peer's bytes left out, or None when it quotes none."""
    if quoting := _QUOTING.match(message):
        return f"{quoting[1]}{quoted_length(quoting[2])} bytes, {NOT_SHOWN}{quoting[4]}"
    if error := _HTTP2_ERROR.match(message):
        return f"{error[1]}{len(error[2])} characters of details, {NOT_SHOWN}"
    return None


def quoted_length(literal: str) -> int:
    """How many bytes a `repr(bytes)` literal stands for (each escape is one)."""
    return len(re.findall(r"\\x[0-9a-f]{2}|\\.|.", literal[2:-1], re.DOTALL))


def without_bytes(text: str) -> str:
    """Text (a traceback) with every bytes or bytearray literal in it left out."""
    return _ANY_BYTES_LITERAL.sub(f"<{NOT_SHOWN}>", text)


_FILTER = LeaveOutPeerBytes()


def install() -> None:
    """Idempotent: a script reload installs it again."""
    logging.getLogger(LOGGER).addFilter(_FILTER)
