"""mitmproxy's log lines that quote what a server sent, with the bytes left out.

Two of mitmproxy's info lines quote a server's bytes as they came: the data it sends past the
end of a response ("Unexpected data from server: b'...'") and a WebSocket ping's or pong's
payload. A server can echo a value there (the request's own, or a socket's), and the line
goes to the terminal and any log handler. The filter here keeps each line and says how many
bytes it left out; it runs only on the records of mitmproxy's connection handler.
"""

from __future__ import annotations

import logging
import re

LOGGER = "mitmproxy.proxy.server"  # where mitmproxy's layers log (proxy/server.py)
_QUOTING = re.compile(r"(?s)(Unexpected data from server: |Received WebSocket p[io]ng from server \(payload: )(b(['\"]).*\3)(\)?)\Z")


class LeaveOutServerBytes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and (quoting := _QUOTING.match(record.msg)):
            record.msg = f"{quoting[1]}{quoted_length(quoting[2])} bytes, not shown by vaultproxy{quoting[4]}"
            record.args = None
        return True


def quoted_length(literal: str) -> int:
    """How many bytes a `repr(bytes)` literal stands for (each escape is one)."""
    return len(re.findall(r"\\x[0-9a-f]{2}|\\.|.", literal[2:-1], re.DOTALL))


_FILTER = LeaveOutServerBytes()


def install() -> None:
    """Idempotent: a script reload installs it again."""
    logging.getLogger(LOGGER).addFilter(_FILTER)
