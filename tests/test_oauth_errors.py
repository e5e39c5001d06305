"""What a token endpoint's error text may hold once the proxy shows it (the client's 502, the
log, token-status.json): never a form of a credential the token request sent. Pure, no I/O.

A server that quotes the request it could not parse hands back the refresh token as the form
body had it (percent-encoded) and the client secret inside the Basic header (base64 of
`client_id:client_secret`). The assertions name which form leaked, never the form itself.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus, urlencode

from vaultcore.oauth import TOKEN_REFUSED, _failing, cleaned
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
