"""What a token endpoint's error text may hold once the proxy shows it (the client's 502, the
log, token-status.json): never a form of a credential the token request sent. Pure, no I/O.

A server that quotes the request it could not parse hands back the refresh token as the form
body had it (percent-encoded) and the client secret inside the Basic header (base64 of
`client_id:client_secret`). The assertions name which form leaked, never the form itself.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import pytest

from vaultcore.oauth import TOKEN_REFUSED, TOKEN_UNAVAILABLE, MintError, _failing, cleaned, request_token
from vaultcore.redaction import value_forms
from vaultcore.tokens import TokenSource

CLIENT_ID = "dev-client"
CLIENT_SECRET = "FAKE-cs/unit+7a1=="  # `/`, `+` and `=`: each is percent-encoded in a form body
REFRESH = "FAKE-rt/Zx9+Qw==unit-long-lived"
SOURCE = TokenSource(
    "billing", ("api.billing.test",), "https://auth.billing.test/oauth/token", CLIENT_ID, "billing.secret",
    refresh_token="billing.refresh", grant="refresh_token",
)
VALUES = {"billing.secret": CLIENT_SECRET, "billing.refresh": REFRESH}


def basic(client_id: str, secret: str) -> str:
    return base64.b64encode(f"{client_id}:{secret}".encode()).decode()


# What went on the wire, and what a server may make of it, by name.
FORMS = {
    "raw client secret": CLIENT_SECRET,
    "raw refresh token": REFRESH,
    "form body": urlencode({"grant_type": "refresh_token", "refresh_token": REFRESH, "client_secret": CLIENT_SECRET}),
    "percent-encoded refresh token": quote(REFRESH, safe=""),
    "percent-encoded refresh token, lower-case hex": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(REFRESH, safe="")),
    "percent-encoded client secret": quote_plus(CLIENT_SECRET),
    "Basic credential": basic(CLIENT_ID, CLIENT_SECRET),
    "Basic credential, unpadded base64url": base64.urlsafe_b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode().rstrip("="),
    # RFC 6749 §2.3.1 form-encodes both before base64 (authlib 1.3.0 to 1.3.1 did)
    "Basic credential, form-encoded first": basic(quote_plus(CLIENT_ID), quote_plus(CLIENT_SECRET)),
    "Basic credential, quoted first": basic(quote(CLIENT_ID), quote(CLIENT_SECRET)),
    "JSON-escaped": json.dumps({"refresh_token": REFRESH, "client_secret": CLIENT_SECRET}).replace("/", "\\/"),
    "base64 client secret": base64.b64encode(CLIENT_SECRET.encode()).decode(),
}


def leaked(text: str) -> list[str]:
    """The credentials some form of which (value_forms) is in `text`, and the FORMS in it:
    names only, so that a failing assertion prints no value."""
    data = text.encode("utf-8", "surrogatepass")
    credentials = {
        "client secret": value_forms(CLIENT_SECRET),
        "refresh token": value_forms(REFRESH),
        "Basic credential": value_forms(f"{CLIENT_ID}:{CLIENT_SECRET}"),
    }
    found = [name for name, forms in credentials.items() if any(form in data for form in forms)]
    return found + [name for name, form in FORMS.items() if form in text]


def test_each_form_of_each_credential_sent_is_cleaned_out() -> None:
    for name, form in FORMS.items():
        text = f"invalid_request (could not parse {form!r}; auth=Basic {form})"
        assert leaked(cleaned(SOURCE, VALUES, text)) == [], name


def test_an_error_quoting_the_whole_request_keeps_its_words_and_names_what_was_cut() -> None:
    body = urlencode({"grant_type": "refresh_token", "refresh_token": REFRESH})
    text = f"could not parse request body {body!r}; auth=Basic {basic(CLIENT_ID, CLIENT_SECRET)}"
    shown = cleaned(SOURCE, VALUES, text)
    assert leaked(shown) == []
    kept = [
        "could not parse request body 'grant_type=refresh_token&refresh_token=[redacted billing.refresh]'" in shown,
        "auth=Basic [redacted Basic credential of billing.secret]" in shown,
    ]
    assert kept == [True, True]  # booleans: a failure prints nothing that could hold a value


def test_placeholders_are_neutralised_and_control_characters_escaped() -> None:
    shown = cleaned(SOURCE, VALUES, f"send <<vault:prod_db>>\r\n{CLIENT_SECRET}\x1b[2J \ud800")  # a lone surrogate: JSON allows it
    assert leaked(shown) == []
    assert ["<<blocked-vault:prod_db>>" in shown, "<<vault:" in shown, "\r" in shown, "\x1b" in shown] == [True, False, False, False]


def test_short_credentials_are_not_cut_out_of_every_word() -> None:
    shown = cleaned(SOURCE, {"billing.secret": "ab", "billing.refresh": REFRESH}, "invalid_client: bad client")
    assert shown == "invalid_client: bad client"


def test_a_mint_error_carries_the_error_code_and_the_cleaned_description() -> None:
    error = _failing(SOURCE, VALUES)(TOKEN_REFUSED, f"the token endpoint refused: invalid_grant ({quote(REFRESH, safe='')} is unknown)")
    assert error.code == TOKEN_REFUSED and leaked(str(error)) == []
    expected = str(error) == "token 'billing' cannot be minted: the token endpoint refused: invalid_grant ([redacted billing.refresh] is unknown)"
    assert expected


# --- a Basic credential with a non-ASCII character: authlib encodes it as latin-1 -------------

def latin1_basic(client_id: str, secret: str) -> str:
    return base64.b64encode(f"{client_id}:{secret}".encode("latin-1")).decode()


def authlib_basic(client_id: str, secret: str) -> str:
    """The Basic credential authlib's client puts in the header, whatever encoding it uses."""
    from authlib.oauth2.auth import encode_client_secret_basic

    client = SimpleNamespace(client_id=client_id, client_secret=secret)
    _, headers, _ = encode_client_secret_basic(client, "POST", "https://auth.billing.test/oauth/token", {}, "")
    return headers["Authorization"].split()[1]


@pytest.mark.parametrize(("client_id", "secret"), [
    (CLIENT_ID, "FAKE-cs-Passwörd§42"), ("clïent-é", "FAKE-cs-ascii-1234"), ("clïent", "FAKE-cs/é+7a1=="),
], ids=["non-ASCII secret", "non-ASCII client id", "both"])
def test_a_non_ascii_basic_credential_is_cut_as_authlib_sends_it(client_id: str, secret: str) -> None:
    source = dataclasses.replace(SOURCE, client_id=client_id)
    values = {"billing.secret": secret, "billing.refresh": REFRESH}
    for name, form in {"latin-1 Basic credential": latin1_basic(client_id, secret), "authlib's Basic credential": authlib_basic(client_id, secret)}.items():
        shown = cleaned(source, values, f"could not accept the request; Authorization: Basic {form}")
        kept = [form in shown, "Authorization: Basic [redacted Basic credential of billing.secret]" in shown]
        assert kept == [False, True], name


# --- a credential quoted in part, or re-encoded: the server's words are not shown -------------

# Every 8 characters hold one that a form body percent-encodes: its encoded forms hold no
# 8-character run of it as it is.
SHREDDED = "FAKE-rt/Zx9+Qw==unit/long+lived/0123+4567"
HIDDEN = "(the token endpoint's answer quotes a credential: not shown)"
WORDS = "MARKER-server-words"  # the server's own wording around the quote


def refusal(monkeypatch: pytest.MonkeyPatch, error: str, description: str, refresh: str = SHREDDED, secret: str = CLIENT_SECRET) -> str:
    """What request_token makes of a token endpoint answering `error` and `description` to a
    refresh token request (authlib's OAuthError, as its client raises it: no I/O)."""
    from authlib.integrations.requests_client import OAuth2Session, OAuthError

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OAuthError(error=error, description=description)

    monkeypatch.setattr(OAuth2Session, "refresh_token", refuse)
    with pytest.raises(MintError) as caught:
        request_token(SOURCE, {"billing.secret": secret, "billing.refresh": refresh})
    assert caught.value.code == TOKEN_REFUSED
    return str(caught.value)


def quoted_in_part() -> dict[str, str]:
    body = urlencode({"grant_type": "refresh_token", "refresh_token": SHREDDED})
    cut = body.index("refresh_token=") + len("refresh_token=") + 24  # the first 24 characters of its percent-encoded form
    return {
        "form body cut short": f"could not parse the body {body[:cut]!r}...",
        "split across lines": "token:\n" + "\n".join(SHREDDED[i:i + 6] for i in range(0, len(SHREDDED), 6)),
        "split across lines, percent-encoded": "\r\n ".join(quote(SHREDDED, safe="")[i:i + 7] for i in range(0, len(SHREDDED) * 2, 7)),
        "percent-encoded twice": "body=" + quote(body, safe=""),
        "percent-encoded three times": quote(quote(quote(SHREDDED, safe=""), safe=""), safe=""),
        "every character \\u-escaped": "".join(f"\\u{ord(c):04x}" for c in SHREDDED),
        "every character \\u-escaped, upper-case hex, cut short": "".join(f"\\u{ord(c):04X}" for c in SHREDDED[:12]),
        "hex": SHREDDED.encode().hex(),
        "hex, upper case, cut short": SHREDDED.encode().hex().upper()[:20],
        "start of the Basic credential": "Authorization: Basic " + basic(CLIENT_ID, CLIENT_SECRET)[:-6],
        "the client secret split across lines": "\n".join(CLIENT_SECRET[i:i + 5] for i in range(0, len(CLIENT_SECRET), 5)),
        # a server (an AWS Lambda's echoed event) that shows the body in base64, wherever the
        # token falls in it: at each of the three byte offsets its encoding can start at
        **{f"the form body in base64, {pad} bytes before it": "event body " + base64.b64encode(
            b"x" * pad + urlencode({"grant_type": "refresh_token", "refresh_token": SHREDDED, "scope": "read"}).encode()).decode()
           for pad in range(3)},
        "the form body in URL-safe base64": base64.urlsafe_b64encode(b"scope=read&refresh_token=" + SHREDDED.encode()).decode(),
    }


@pytest.mark.parametrize("name", list(quoted_in_part()))
def test_a_description_quoting_a_credential_in_part_is_not_shown_but_its_error_code_is(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    form = quoted_in_part()[name]
    shown = refusal(monkeypatch, "invalid_grant", f"{WORDS}: {form}")
    expected = [
        shown == f"token 'billing' cannot be minted: the token endpoint refused: invalid_grant {HIDDEN}",
        WORDS in shown, form in shown,
    ]
    assert expected == [True, False, False]  # booleans: a failure prints nothing that could hold a value


def test_an_error_code_quoting_a_credential_is_not_shown_either(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = refusal(monkeypatch, f"invalid_grant:{SHREDDED.encode().hex()}", WORDS)
    expected = [
        shown == f"token 'billing' cannot be minted: {HIDDEN}",
        WORDS in shown, "invalid_grant" in shown, SHREDDED.encode().hex()[:8] in shown,
    ]
    assert expected == [True, False, False, False]


def test_an_ordinary_description_is_shown_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    description = "The refresh token is invalid, expired or revoked (request 7f3a9c2e-1b4d-4c1a, see https://auth.billing.test/docs%2Ferrors)"
    shown = refusal(monkeypatch, "invalid_grant", description)
    assert shown == f"token 'billing' cannot be minted: the token endpoint refused: invalid_grant ({description})"


def test_a_description_quoting_whole_forms_shows_them_cut_and_keeps_its_words(monkeypatch: pytest.MonkeyPatch) -> None:
    body = urlencode({"grant_type": "refresh_token", "refresh_token": SHREDDED})
    shown = refusal(monkeypatch, "invalid_grant", f"{WORDS}: {body}; Authorization: Basic {basic(CLIENT_ID, CLIENT_SECRET)}")
    expected = shown == (
        f"token 'billing' cannot be minted: the token endpoint refused: invalid_grant ({WORDS}: grant_type=refresh_token&"
        "refresh_token=[redacted billing.refresh]; Authorization: Basic [redacted Basic credential of billing.secret])"
    )
    assert expected


def test_a_short_credential_is_looked_for_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    split = refusal(monkeypatch, "invalid_client", f"{WORDS}: s3c\nr!t", secret="s3cr!t")
    apart = refusal(monkeypatch, "invalid_client", f"{WORDS}: s3c and r!t", secret="s3cr!t")
    assert [split.endswith(HIDDEN), WORDS in apart] == [True, True]


def test_an_unreachable_endpoint_whose_error_quotes_a_credential_keeps_the_proxys_words(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from authlib.integrations.requests_client import OAuth2Session

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise requests.ConnectionError(f"('Connection aborted.', BadStatusLine('{WORDS} {SHREDDED.encode().hex()}'))")

    monkeypatch.setattr(OAuth2Session, "refresh_token", broken)
    with pytest.raises(MintError) as caught:
        request_token(SOURCE, {"billing.secret": CLIENT_SECRET, "billing.refresh": SHREDDED})
    shown = str(caught.value)
    expected = [
        caught.value.code == TOKEN_UNAVAILABLE,
        shown.startswith("token 'billing' cannot be minted: the token endpoint could not be asked: ConnectionError"),
        shown.endswith(HIDDEN), WORDS in shown,
    ]
    assert expected == [True, True, True, False]
