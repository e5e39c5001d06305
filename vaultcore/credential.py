"""The proxy credential: a random token in `proxy-credential` in the vault home (0600).

A client the proxy cannot identify as its own user (a remote client, another OS, and every
client of a proxy that listens beyond loopback) must present it as the password of
Proxy-Authorization Basic. `vaultproxy env` and `exec` put it in the proxy URL they hand to
clients (http://vaultproxy:TOKEN@127.0.0.1:8080), so it travels in the environment, never on
a command line.

Every proxy makes its own when it starts, publishes it with its record (proxy.json), and
deletes it when it stops. A client keeps its proxy URL after the proxy is gone, and its next
request gives the token to whoever listens on that port by then (another local user, say):
a token that outlived its proxy would open the next one.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from vaultcore.atomic import replace_file
from vaultcore.store import VaultError, ensure_home

CREDENTIAL_FILE = "proxy-credential"
CREDENTIAL_USER = "vaultproxy"  # the proxy accepts any user name; this one says what the URL is for
# Characters a URL's userinfo takes unescaped, so the token goes into the proxy URL as it is.
TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{32,256}")


def read_credential(home: Path) -> str | None:
    """The token, or None when no proxy has created one yet. One that others can read is
    refused: with it they could use the proxy, and the secrets it resolves."""
    path = home / CREDENTIAL_FILE
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            token = f.read(1024).decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise VaultError(f"cannot read the proxy credential {path}: {e.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise VaultError(f"the proxy credential {path} is readable by others: chmod 600 {path}")
    if not TOKEN_RE.fullmatch(token):
        raise VaultError(f"{path} is not a proxy credential: delete it and restart the proxy to make a new one")
    return token


def new_token() -> str:
    return secrets.token_urlsafe(32)


def publish_credential(home: Path, token: str) -> None:
    """`token` as the home's credential, in place of any other. Written atomically: a client
    reading it meanwhile gets the old token or the new one whole, never a part."""
    ensure_home(home)
    try:
        replace_file(home / CREDENTIAL_FILE, token.encode(), mode=0o600)
    except OSError as e:
        raise VaultError(f"cannot write the proxy credential {home / CREDENTIAL_FILE}: {e.strerror}") from None


def withdraw_credential(home: Path, token: str) -> None:
    """Delete the home's credential if it is still `token`: a second proxy for this home may
    have published its own since."""
    try:
        if read_credential(home) == token:
            (home / CREDENTIAL_FILE).unlink()
    except (VaultError, OSError):
        pass  # unreadable or gone: nothing of ours to take back
