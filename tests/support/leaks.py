"""The leak hunt: find secret values, in every encoding they can take, in bytes, files, flow
files and live processes; report every hit with its location and a masked excerpt.

Values are made of a random token (`leak_value`), so a hit is never a coincidence, and
failure messages mask them (`mask`): a test about a leak must not print the value itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from mitmproxy import http, io

EXCERPT = 40  # bytes shown on each side of a hit
MIN_TOKEN = 16
SHOWN_HITS = 60  # a failure lists at most this many hits


@dataclass(frozen=True)
class Needle:
    """One byte string that must not be found: a secret in one of its encodings."""

    secret: str
    form: str
    data: bytes = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.secret}[{self.form}]"


@dataclass(frozen=True)
class Hit:
    where: str
    offset: int
    needle: Needle
    excerpt: str  # the surroundings, with every needle masked by its label

    def __str__(self) -> str:
        return f"{self.where} @{self.offset}: {self.needle.label} in ...{self.excerpt}..."


def leak_value(extra: str = "") -> tuple[str, str]:
    """(token, value): a random token, and a value made of it plus `extra`."""
    token = f"LEAK-{secrets.token_hex(12)}"
    return token, token + extra


def base64_fragments(data: bytes) -> dict[str, bytes]:
    """What any base64 text of anything containing `data` contains, for each of the three
    alignments `data` can have relative to base64's 3-byte groups (standard and URL-safe)."""
    fragments = {}
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + data)
        start = 4 if shift else 0  # the first group mixes filler and data
        fragment = encoded[start : 4 * ((shift + len(data)) // 3)]
        fragments[f"base64@{shift}"] = fragment
        fragments[f"base64url@{shift}"] = fragment.translate(bytes.maketrans(b"+/", b"-_"))
    return fragments


def needles_for(secret: str, value: str | bytes, token: str) -> list[Needle]:
    """Every form of `value` worth looking for.

    `token` is the random core embedded in the value: it survives percent-, form- and
    JSON-escaping (it is plain ASCII letters, digits and '-'), so it catches any encoding not
    listed here; base64 and hex, which do not keep it, are searched at every alignment.
    """
    assert len(token) >= MIN_TOKEN, "a short token would match by chance, and its base64 fragments may be empty"
    raw = value if isinstance(value, bytes) else value.encode()
    forms: dict[str, bytes] = {"token": token.encode(), "raw": raw, "hex": binascii.hexlify(token.encode())}
    forms["HEX"] = forms["hex"].upper()
    forms["percent"] = quote(raw, safe="").encode()
    forms["percent-lower"] = re.sub(rb"%[0-9A-F]{2}", lambda escape: escape[0].lower(), forms["percent"])
    forms["form"] = quote_plus(raw, safe="").encode()
    if isinstance(value, str):
        forms["json"] = json.dumps(value)[1:-1].encode()
        forms["json-utf8"] = json.dumps(value, ensure_ascii=False)[1:-1].encode()
    forms.update(base64_fragments(raw))
    forms.update({f"token-{name}": data for name, data in base64_fragments(token.encode()).items()})
    unique: dict[bytes, str] = {}
    for name, data in forms.items():
        unique.setdefault(data, name)
    return [Needle(secret, name, data) for data, name in unique.items()]


def mask(data: bytes, needles: Iterable[Needle]) -> str:
    """`data` printable with every needle replaced by its label: failure messages must not
    print the values they are about."""
    for needle in sorted(needles, key=lambda n: -len(n.data)):
        data = data.replace(needle.data, f"<{needle.label}>".encode())
    return data.decode("utf-8", errors="backslashreplace")


def hunt_bytes(where: str, data: bytes, needles: Iterable[Needle]) -> list[Hit]:
    needles = list(needles)
    spans = []
    for needle in needles:
        offset = data.find(needle.data)
        while offset >= 0:
            spans.append((offset, offset + len(needle.data), needle))
            offset = data.find(needle.data, offset + 1)
    hits = []
    for start, end, needle in spans:
        low, high = max(0, start - EXCERPT), end + EXCERPT
        # An occurrence cut by the excerpt's edge would not be masked: widen over it.
        while cut := [(s, e) for s, e, _ in spans if s < low < e or s < high < e]:
            low, high = min(low, *(s for s, _ in cut)), max(high, *(e for _, e in cut))
        hits.append(Hit(where, start, needle, mask(data[low:high], needles)))
    return hits


def hunt_state(where: str, state: Any, needles: list[Needle]) -> list[Hit]:
    """Every bytes/str leaf of a nested state (mitmproxy's get_state()), located by its path."""
    if isinstance(state, Mapping):
        return [hit for key, item in state.items() for hit in hunt_state(f"{where}.{key}", item, needles)]
    if isinstance(state, (list, tuple)):
        return [hit for i, item in enumerate(state) for hit in hunt_state(f"{where}[{i}]", item, needles)]
    if isinstance(state, str):
        return hunt_bytes(where, state.encode("utf-8", errors="surrogateescape"), needles)
    if isinstance(state, bytes):
        return hunt_bytes(where, state, needles)
    return []


def hunt_flow_file(path: Path, needles: list[Needle]) -> list[Hit]:
    """The flows of a mitmproxy flow file, field by field, plus the decoded (decompressed)
    bodies, which the raw file does not show."""
    hits = []
    with path.open("rb") as f:
        for i, flow in enumerate(io.FlowReader(f).stream()):
            where = f"{path} flow {i} ({flow.type})"
            hits += hunt_state(where, flow.get_state(), needles)
            if isinstance(flow, http.HTTPFlow):
                for name, message in (("request", flow.request), ("response", flow.response)):
                    if message is not None and message.raw_content:
                        content = message.get_content(strict=False) or b""
                        hits += hunt_bytes(f"{where} decoded {name} body", content, needles)
    return hits


def files_under(roots: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under `roots` (recursively, without following links)."""
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory, name)
                if path.is_file() and not path.is_symlink():
                    yield path


def hunt_paths(roots: Iterable[Path], needles: list[Needle]) -> list[Hit]:
    return [hit for path in files_under(roots) for hit in hunt_bytes(str(path), path.read_bytes(), needles)]


def fail_on(hits: list[Hit]) -> None:
    """Fail listing the hits (masked), without a traceback that could show a value."""
    if hits:
        pytest.fail(f"{len(hits)} leaks:\n" + "\n".join(map(str, hits[:SHOWN_HITS])), pytrace=False)


def read_process(pid: int) -> tuple[bytes, bytes] | None:
    """(cmdline, environ) of a live process; None once it has exited (a zombie has neither)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return (cmdline, environ) if cmdline else None


@dataclass
class Exposure:
    """Everything a session exposed outside the allowed upstreams, by location."""

    blobs: dict[str, bytes] = field(default_factory=dict)

    def add(self, where: str, data: bytes) -> None:
        self.blobs[where] = data

    def record_process(self, where: str, pid: int, marker: bytes) -> bool:
        """Record the argv and environment of `pid` if it still runs the program whose
        command line contains `marker`."""
        seen = read_process(pid)
        if seen is None or marker not in seen[0]:
            return False
        self.add(f"{where}: /proc/{pid}/cmdline", seen[0])
        self.add(f"{where}: /proc/{pid}/environ", seen[1])
        return True

    def hunt(self, needles: list[Needle]) -> list[Hit]:
        return [hit for where, data in self.blobs.items() for hit in hunt_bytes(where, data, needles)]
