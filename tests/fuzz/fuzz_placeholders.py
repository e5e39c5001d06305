"""Coverage-guided fuzzing of the placeholder engine with atheris (by hand, not part of the suite).

    python -m venv /tmp/atheris-venv && /tmp/atheris-venv/bin/pip install atheris
    PYTHONPATH=. /tmp/atheris-venv/bin/python tests/fuzz/fuzz_placeholders.py -atheris_runs=1000000

(`vaultcore.placeholders` imports nothing outside the standard library, so the venv needs only
atheris.) Add `-max_total_time=600` to bound a run, or a corpus directory to keep what it found.
A crash prints the input and writes it to crash-<hash>; replay it by passing that file.

Each input is split into a context, a value per key and a request part; the properties are
those of tests/test_bad_input.py: only SubstitutionError escapes, a lookup that knows nothing
changes nothing, and chunk-by-chunk substitution equals one-shot substitution.
"""

import sys

import atheris

# Not the "RegEx" hook: its pattern proxy lacks search(string, pos), which the engine uses.
atheris.enabled_hooks.add("str")
with atheris.instrument_imports():
    from vaultcore.placeholders import Context, StreamSubstituter, SubstitutionError, substitute

CONTEXTS = list(Context)
KEYS = ["a", "db.user", "x/y-z_0", "k" * 256, "refused"]
# Spliced into the input, so that placeholders and near-misses are common from the start.
FRAGMENTS = [
    b"<<vault:", b">>", b"|base64", b"|urlencode", b"|raw", b"|", b"%3C%3Cvault:", b"%3c%3cvault%3A",
    b"%3E%3E", b"%7C", b"\r\n", b"\x00", b"\xff", *(key.encode() for key in KEYS),
]


def lookup_from(provider: atheris.FuzzedDataProvider):
    values = {}
    for key in KEYS:
        kind = provider.ConsumeIntInRange(0, 2)
        if kind == 1:
            values[key] = provider.ConsumeUnicodeNoSurrogates(8) if provider.ConsumeBool() else provider.ConsumeUnicode(8)
        elif kind == 2:
            values[key] = provider.ConsumeBytes(8)

    def lookup(key):
        if key == "refused":
            raise SubstitutionError("host_not_allowed", key, "refused")
        return values.get(key)

    return lookup


def one_shot(data, context, lookup):
    try:
        return substitute(data, context, lookup)[0]
    except SubstitutionError:
        return SubstitutionError


def streamed(data, context, lookup, cuts):
    stream = StreamSubstituter(context, lookup)
    pieces, start = [], 0
    try:
        for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
            pieces.append(stream.feed(data[start:cut]))
            start = cut
        pieces.append(stream.flush())
    except SubstitutionError:
        return SubstitutionError
    return b"".join(pieces)


def spliced(provider: atheris.FuzzedDataProvider) -> bytes:
    """The request part: runs of fuzz bytes and FRAGMENTS, in the order the input says."""
    parts = []
    while provider.remaining_bytes() and len(parts) < 64:
        choice = provider.ConsumeIntInRange(0, len(FRAGMENTS))
        parts.append(FRAGMENTS[choice] if choice < len(FRAGMENTS) else provider.ConsumeBytes(provider.ConsumeIntInRange(1, 16)))
    return b"".join(parts)


def test_one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    context = CONTEXTS[provider.ConsumeIntInRange(0, len(CONTEXTS) - 1)]
    lookup = lookup_from(provider)
    cuts = [provider.ConsumeIntInRange(0, 4096) for _ in range(provider.ConsumeIntInRange(0, 4))]
    as_text = provider.ConsumeBool()
    data = spliced(provider)
    if as_text:
        data = data.decode("utf-8", "surrogateescape")

    result = one_shot(data, context, lookup)  # anything but SubstitutionError propagates: a finding
    assert substitute(data, context, lambda key: None) == (data, [])
    if not as_text:
        assert streamed(data, context, lookup, cuts) == result


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
