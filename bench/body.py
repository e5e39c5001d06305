"""2. Body substitution and response redaction throughput, in process, on the functions the
addon runs.

For 1 MB and 10 MB JSON bodies: `placeholders.resolve` (what the addon runs on a request body:
near misses refused, then substitution) with 0, 1 and 1,000 placeholders, a gzip-compressed
body through `vaultproxy.rewrite` on a real mitmproxy Request (decode, plan, substitute,
re-encode, as the addon does), and a streamed body through `StreamSubstituter` in 64 KiB
chunks. Each is sampled in alternation with its floor, a bare `bytes.replace` of the same
text (all placeholders name one key, so one replace call does the floor's work); the gzip case
also with mitmproxy's own gzip decode + replace + encode.

Responses: `responses.cleaned` (neutralise, then redact) on a JSON body echoing the values of
three keys a request used, against three `bytes.replace` of those values; and on the same body
for a request that used no secret (neutralising only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.net import encoding

from bench.common import CpuPlan, Estimate, Target, alternate, median, paired, paired_ratio, profile, table, timed
from vaultcore.index import Destination, Secret, SecretIndex
from vaultcore.placeholders import Budget, Context, Lookup, StreamSubstituter, Text, resolve, resolve_each
from vaultcore.redaction import Redactor
from vaultproxy import guard, responses, rewrite

HOST = "api.example.com"
KEY = "bench.body"
PLACEHOLDER = f"<<vault:{KEY}>>".encode()
VALUE = "bench-body-value-not-a-secret"  # JSON-escaping leaves it as it is, so the floor's output is the same
CHUNK = 64 * 1024
MB = 1_000_000
TARGET_RATIO = 2.5  # uncompressed request bodies: within 2.5x of the floor
REDACT_TARGET_RATIO = 3.0  # a response echoing 3 values: within 3x of replacing the three
ECHOED = {f"<<vault:bench.echo{i}>>".encode(): f"bench-echo-value-{i}-not-a-secret" for i in (1, 2, 3)}


def json_body(size: int, placeholders: int) -> bytes:
    """A JSON array of about `size` bytes whose records' "token" holds the placeholder in
    exactly `placeholders` records, spread evenly (the others hold a plain string)."""
    record = '{"id": %d, "name": "item-%d", "note": "lorem ipsum dolor sit amet, consectetur adipiscing elit", "token": "%s"}'
    count = size // len(record % (0, 0, PLACEHOLDER.decode()))
    marked = {i * count // placeholders for i in range(placeholders)} if placeholders else set()
    tokens = (PLACEHOLDER.decode() if i in marked else "not-a-placeholder-" for i in range(count))
    return ("[" + ",\n".join(record % (i, i, token) for i, token in enumerate(tokens)) + "]").encode()


def lookup() -> Lookup:
    """The lookup the addon gets: a real index, policy checks included."""
    index = SecretIndex(local_secrets=[Secret(KEY, VALUE, (HOST,))])
    return index.lookup_for(Destination(HOST, "https"))


def floor(data: bytes) -> bytes:
    return data.replace(PLACEHOLDER, VALUE.encode())


def echo_body(size: int) -> bytes:
    """A JSON response of about `size` bytes that echoes each value of ECHOED once."""
    data = json_body(size, len(ECHOED))
    for value in ECHOED.values():
        data = data.replace(PLACEHOLDER, value.encode(), 1)
    return data


def redact_floor(data: bytes) -> bytes:
    for placeholder, value in ECHOED.items():
        data = data.replace(value.encode(), placeholder)
    return data


def gzip_floor(compressed: bytes) -> bytes:
    return encoding.encode_gzip(floor(encoding.decode_gzip(compressed)))


def streamed(data: bytes, chunks: list[bytes]) -> list[bytes]:
    substituter = StreamSubstituter(Context.JSON, lookup())
    out = [substituter.feed(chunk) for chunk in chunks]
    out.append(substituter.flush())
    return out


def gzip_request(data: bytes) -> http.Request:
    return http.Request.make("POST", f"https://{HOST}/upload", data, {"content-type": "application/json", "content-encoding": "gzip"})


def rewrite_gzip(request: http.Request) -> http.Request:
    """What the addon does with a compressed body: decode, plan, substitute, re-encode."""
    plan = rewrite.plan(request, rewrite.decoded_body(request))
    assert plan is not None
    change = rewrite.rewrite_request(request, plan, Unscoped(lookup()), Budget(guard.Settings().max_growth))
    change.apply(request)
    return request


class Unscoped:
    """A lookup as `rewrite_request` takes it, without the proxy's per-destination cache
    (`guard.Scope`): what resolving the body costs, not what a cache saves."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    def resolve(self, data: Text, context: Context, budget: Budget) -> tuple[Text, list[str]]:
        return resolve(data, context, self._lookup, budget)

    def resolve_all(self, texts: tuple[Text, ...], context: Context, budget: Budget) -> tuple[tuple[Text, ...], list[str]]:
        return resolve_each(texts, context, self._lookup, budget)


@dataclass(frozen=True)
class Case:
    label: str
    placeholders: int
    kind: str  # "resolve" | "gzip" | "stream" | "redact" | "clean"
    compressed: bool = False


CASES = (
    Case("JSON, 0 placeholders", 0, "resolve"),
    Case("JSON, 1 placeholder", 1, "resolve"),
    Case("JSON, 1,000 placeholders", 1000, "resolve"),
    Case("gzip JSON, 1 placeholder (rewrite_request)", 1, "gzip", compressed=True),
    Case("streamed JSON, 0 placeholders (64 KiB chunks)", 0, "stream"),
    Case("streamed JSON, 1 placeholder (64 KiB chunks)", 1, "stream"),
    Case("streamed JSON, 1,000 placeholders (64 KiB chunks)", 1000, "stream"),
    Case("response echoing 3 values, redacted (vs 3 replaces)", 3, "redact"),
    Case("response, request used no secret (vs 3 replaces)", 3, "clean"),
)


def operations(case: Case, data: bytes) -> dict[str, Callable[[], float]]:
    """Per measured variant, a callable that prepares one run (untimed) and returns its time.
    Each checks once, before any timing, that it computes what the floor computes."""
    expected, floor_op = (redact_floor(data), redact_floor) if case.kind in ("redact", "clean") else (floor(data), floor)
    if case.kind == "resolve":
        op: Callable[[], object] = functools.partial(resolve, data, Context.JSON, lookup(), Budget(10 * len(data)))
        check = resolve(data, Context.JSON, lookup())[0]
        variant = lambda: timed(op)  # noqa: E731
    elif case.kind in ("redact", "clean"):
        redactor = Redactor(ECHOED) if case.kind == "redact" else None
        out = responses.cleaned(data, redactor)
        check = out if redactor else expected if out is data else out  # no secret used: the body goes as it is
        variant = lambda: timed(lambda: responses.cleaned(data, redactor))  # noqa: E731
    elif case.kind == "stream":
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        check = b"".join(streamed(data, chunks))
        variant = lambda: timed(lambda: streamed(data, chunks))  # noqa: E731
    else:
        template = gzip_request(data)
        check = rewrite_gzip(template.copy()).content

        def variant() -> float:
            request = template.copy()
            # mitmproxy caches the last decode/encode by content; each real request is new to it.
            encoding._cache = encoding.CachedDecode(None, None, None, None)
            return timed(lambda: rewrite_gzip(request))

    if check != expected:
        raise RuntimeError(f"{case.label}: the result differs from the floor's, so the timing would be meaningless")
    variants = {"case": variant, "floor": lambda: timed(lambda: floor_op(data))}
    if case.compressed:
        compressed = encoding.encode_gzip(data)
        variants["gzip floor"] = lambda: timed(lambda: gzip_floor(compressed))
    return variants


def run(settings: Mapping[str, Any], workdir: Path, plan: CpuPlan) -> tuple[dict[str, Any], str, list[Target]]:
    rows: list[tuple[object, ...]] = []
    results: list[dict[str, Any]] = []
    worst: tuple[Estimate, Case, bytes] | None = None  # of the uncompressed request bodies
    worst_redact: Estimate | None = None
    for size_mb, samples in settings["samples"].items():
        for case in CASES:
            data = echo_body(size_mb * MB) if case.kind in ("redact", "clean") else json_body(size_mb * MB, case.placeholders)
            variants = operations(case, data)
            times = alternate(list(variants), samples, lambda name: variants[name]())
            ratio = paired(times["case"], times["floor"])
            entry = {
                "case": case.label, "size_bytes": len(data), "samples": times, "ratio_to_floor": ratio,
                "mb_per_s": len(data) / median(times["case"]) / MB, "floor_mb_per_s": len(data) / median(times["floor"]) / MB,
            }
            if case.compressed:
                entry["gzip_floor_mb_per_s"] = len(data) / median(times["gzip floor"]) / MB
                entry["ratio_to_gzip_floor"] = paired_ratio(times["case"], times["gzip floor"])
            results.append(entry)
            rows.append((
                case.label, f"{size_mb} MB", f"{entry['mb_per_s']:.0f}", f"{entry['floor_mb_per_s']:.0f}", str(ratio),
                f"{entry['gzip_floor_mb_per_s']:.0f} ({entry['ratio_to_gzip_floor']:.2f}x)" if case.compressed else "",
            ))
            if case.kind == "redact" and (worst_redact is None or ratio.median > worst_redact.median):
                worst_redact = ratio
            elif case.kind in ("resolve", "stream") and (worst is None or ratio.median > worst[0].median):
                worst = (ratio, case, data)
    targets = [
        Target(
            "body: uncompressed, time vs bytes.replace", f"{worst[0]}x ({worst[1].label}, {len(worst[2]) / MB:.0f} MB)" if worst else "-",
            f"<= {TARGET_RATIO:g}x", worst[0].verdict(TARGET_RATIO, at_most=True) if worst else True,
        ),
        Target(
            "response: echo of 3 values redacted, time vs 3 bytes.replace", f"{worst_redact}x" if worst_redact else "-",
            f"<= {REDACT_TARGET_RATIO:g}x", worst_redact.verdict(REDACT_TARGET_RATIO, at_most=True) if worst_redact else True,
        ),
    ]
    markdown = (
        "### 2. Body substitution and response redaction throughput\n\n"
        "In process, one body per sample, case and floor alternating, timed in the thread's CPU time; "
        "MB = 10^6 bytes, medians. "
        "\"x floor\" = median of per-pair time ratios, with its 95% interval, against a bare `bytes.replace` of the same text "
        "(responses: three `bytes.replace`, one per value echoed).\n\n"
        + table(("case", "size", "MB/s", "floor MB/s", "x floor", "gzip floor MB/s (x)"), rows)
    )
    profile_text = None
    if targets[0].met is not True and worst is not None:
        variant = operations(worst[1], worst[2])["case"]
        profile_text = profile(variant, repeat=10)
        markdown += f"\n\nProfile of the worst case ({worst[1].label}, {len(worst[2]) / MB:.0f} MB, 10 runs, pyinstrument):\n\n```\n{profile_text}\n```"
    return {"cases": results, "profile": profile_text}, markdown, targets
