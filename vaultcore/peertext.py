"""Text a peer chose, fit to quote: a token endpoint's error, a provider's message, a
command's standard error.

Such text goes into the proxy's answers to clients, its console and log, status files and the
CLI's output. Quoted, it stays on one line with every control character escaped (no forged
log line, no terminal escape sequence), within a bound, and with any placeholder opener
neutralised (the proxy's own answers are not cleaned as upstream responses are, and a client
may send back what it reads).
"""

from __future__ import annotations

from vaultcore.redaction import neutralise_text

LIMIT = 300  # characters


def quoted(text: str, limit: int | None = LIMIT, *, neutralised: bool = True) -> str:
    """`text` on one line, control characters (and invisible ones: bidi controls) escaped as
    Python would, cut to `limit` characters (None: whole), placeholder openers neutralised.
    `neutralised=False` keeps them: for text only ever shown to the user, never sent back,
    such as the paths of their own requests (a placeholder there is what they sent)."""
    cut = text if limit is None else text[:limit]
    shown = cut if cut.isprintable() else "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    shown += "..." if len(cut) < len(text) else ""
    return neutralise_text(shown) if neutralised else shown
