"""Content-Encoding undone as clients undo it, within a bound.

A check must read a body as its reader will: clients decode more than mitmproxy does (every
member of a gzip body, where mitmproxy stops after the first; `x-gzip`; stacked codings such
as `gzip, br`), and an upstream server decodes what a client uploads.

A few kilobytes can inflate to gigabytes (a decompression bomb), from any server a client
visits or any page that posts through the proxy, and all decoding runs on the event loop
that serves every client. So, within what clients decode:
- one step of decoding (a whole body, or one chunk of a streamed one) yields at most
  MAX_DECODED bytes, and raises TooLarge past that: every decompressor is asked for at most
  that much;
- a zstd frame may need a window of 8 MiB at most, as for browsers (RFC 9659);
- a body may stack two codings and hold MAX_MEMBERS gzip members or zstd frames at most.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import brotli
from mitmproxy.net import encoding

Filter = Callable[[bytes], bytes]

MAX_DECODED = 64 << 20
MAX_CODINGS = 2  # more, and the body counts as in a coding the proxy does not know
MAX_MEMBERS = 1024  # each starts a decompressor: an empty gzip member costs 26 µs in 20 bytes
ZSTD_WINDOW_LOG = 23  # 8 MiB
_SLICE = 1024  # input fed at a time to a decompressor that takes no output bound


class Undecodable(ValueError):
    """A body that does not decode as its Content-Encoding says (cut short, garbage)."""


class TooLarge(Undecodable):
    def __init__(self) -> None:
        super().__init__(f"it decodes to more than {MAX_DECODED >> 20} MiB")


def decode_whole(raw: bytes, content_encoding: str) -> bytes | None:
    """`raw` decoded in full; None in a coding the proxy does not know. Raises Undecodable."""
    decode = decoder(content_encoding)
    if decode is None:
        return None
    try:
        return decode(raw) + decode(b"")
    except Undecodable:
        raise
    except Exception:  # zlib's, brotli's, zstd's errors: all mean the same
        raise Undecodable(f"it does not decode as its Content-Encoding ({content_encoding}) says") from None


def decoder(content_encoding: str) -> Filter | None:
    """A chunk-by-chunk decoder of a body with this Content-Encoding, every coding undone (the
    last applied first); None when one of them is unknown, or there are too many. It takes
    `b""` at the end of the body, and raises when the body was cut short or a chunk decodes
    to too much."""
    codings = [coding for coding in (part.strip().lower() for part in content_encoding.split(",")) if coding not in ("", "identity")]
    if len(codings) > MAX_CODINGS or any(coding not in _CODINGS for coding in codings):
        return None
    decoders = [_CODINGS[coding]() for coding in reversed(codings)]

    def decode(chunk: bytes) -> bytes:
        if not chunk:
            for each in decoders:
                each(b"")
            return b""
        for each in decoders:
            chunk = each(chunk)
            if not chunk:
                break
        return chunk

    return decode


def _members(start: Callable[[bytes], Any], *, header: int = 1, padding: bool = False) -> Filter:
    """A decoder of a body of one or more compressed members, each undone by a fresh
    decompressor `start(its first bytes)` (zlib's or zstd's: `decompress(data, max_length)`,
    `eof`, `unused_data`), once `header` bytes of it have come (a chunk may hold fewer).
    `padding`: NUL bytes between and after members are skipped, as gzip readers do."""
    current: Any = None
    pending = b""  # the start of a member, shorter than `header`
    members = 0

    def decode(chunk: bytes) -> bytes:
        nonlocal current, pending, members
        if not chunk:
            if pending or (current is not None and not current.eof):
                raise Undecodable("the body ends inside a compressed member")
            return b""
        out, room = [], MAX_DECODED
        while chunk:
            if current is None:
                chunk = (pending + chunk).lstrip(b"\0") if padding else pending + chunk
                pending = b""
                if len(chunk) < header:
                    pending = chunk
                    break
                members += 1
                if members > MAX_MEMBERS:
                    raise Undecodable(f"it holds more than {MAX_MEMBERS} compressed members")
                current = start(chunk)
            # Below max_length, a decompressor has taken all of its input.
            out.append(piece := current.decompress(chunk, room + 1))
            if len(piece) > room:
                raise TooLarge()
            room -= len(piece)
            if not current.eof:
                break
            chunk, current = current.unused_data, None
        return b"".join(out)

    return decode


def _in_slices(step: Callable[[bytes], bytes], data: bytes, max_length: int, ended: Callable[[], bool]) -> tuple[bytes, int]:
    """For a decompressor that takes no output bound (zstandard's, on mitmproxy 11): `data`
    fed to `step` a slice at a time, until the output passes
    `max_length` or the stream `ended()`. Returns the output and how much of `data` went in."""
    out, size, at = [], 0, 0
    while at < len(data) and size < max_length and not ended():
        out.append(piece := step(data[at : at + _SLICE]))
        size += len(piece)
        at += _SLICE
    return b"".join(out), min(at, len(data))


class _ZstdInSlices:
    """zstandard's frame decompressor (mitmproxy 11) with a bounded `decompress` like
    compression.zstd's, but for one thing: input left once max_length is passed is dropped
    (the caller gives up on the body then). A zstd byte inflates to 32 KiB at most (a 128 KiB
    block of one repeated byte takes four), so a slice overshoots the bound by 32 MiB at most."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.unused_data = b""

    @property
    def eof(self) -> bool:
        return self._inner.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out, taken = _in_slices(self._inner.decompress, data, max_length, lambda: self._inner.eof)
        if self._inner.eof:
            self.unused_data = self._inner.unused_data + data[taken:]
        return out


def _zstd_frame() -> Any:
    """A decompressor of one zstd frame, from the zstd module mitmproxy uses (compression.zstd
    or its backport on mitmproxy 12, which bound their output; zstandard on 11)."""
    zstd = encoding.zstd
    if hasattr(zstd, "DecompressionParameter"):
        return zstd.ZstdDecompressor(options={zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG})
    return _ZstdInSlices(zstd.ZstdDecompressor(max_window_size=1 << ZSTD_WINDOW_LOG).decompressobj())


def _brotli_bounds_output() -> bool:
    """Brotli 1.2 (mitmproxy 12) bounds what one call yields; Brotli 1.1 (mitmproxy 11) cannot."""
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


# Without a bound, no br byte is decoded at all: 1,681 bytes of br (1 GiB of zeros) yield 616
# MiB for their first kilobyte. The proxy then asks for no br (accepting_no_brotli), and a br
# body counts as undecodable.
BROTLI_BOUNDED = _brotli_bounds_output()


def accepting_no_brotli(accept_encoding: str) -> str:
    """A client's Accept-Encoding, asking for no br where it asked for br by name or by `*`
    (`br;q=0`: refused outright); any other value as it is."""
    parts = [part.strip() for part in accept_encoding.split(",") if part.strip()]
    named = [part for part in parts if part.split(";")[0].strip().lower() == "br"]
    if not named and not any(part.split(";")[0].strip() == "*" for part in parts):
        return accept_encoding
    return ", ".join([part for part in parts if part not in named] + ["br;q=0"])


def _brotli() -> Filter:
    brotli_decoder = brotli.Decompressor()
    fed = False

    def decode(chunk: bytes) -> bytes:
        nonlocal fed
        if not chunk:
            if fed and not brotli_decoder.is_finished():
                raise Undecodable("the body ends inside its brotli stream")
            return b""
        if not BROTLI_BOUNDED:
            raise Undecodable("Brotli 1.1, which mitmproxy 11 uses, cannot decode br within a bound")
        fed = True
        out = brotli_decoder.process(chunk, output_buffer_limit=MAX_DECODED + 1)
        if len(out) > MAX_DECODED:
            raise TooLarge()
        return out

    return decode


def _zlib_wrapped(first: bytes) -> bool:
    """Whether a deflate body (its first two bytes at least) has the zlib header it should
    have; some servers send raw deflate."""
    return first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0


def _gzip() -> Filter:
    return _members(lambda _: zlib.decompressobj(zlib.MAX_WBITS | 32), padding=True)  # a zlib header is read too, as by curl


_CODINGS: dict[str, Callable[[], Filter]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": lambda: _members(lambda first: zlib.decompressobj(zlib.MAX_WBITS if _zlib_wrapped(first) else -zlib.MAX_WBITS), header=2),
    "br": _brotli,
    "zstd": lambda: _members(lambda _: _zstd_frame()),
}
