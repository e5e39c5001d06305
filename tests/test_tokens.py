"""Token sources (tokens.yaml) and tokens as the index holds them: pure, no I/O."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from vaultcore.index import MINT_NEEDED, Destination, Secret, SecretIndex
from vaultcore.oauth import TOKEN_UNAVAILABLE, credentials
from vaultcore.placeholders import SubstitutionError
from vaultcore.tokens import Token, TokenSource, TokenSourceError, parse_sources, source_secrets
from vaultcore.vault import Vault

SOURCE = TokenSource("billing", ("api.billing.test",), "https://auth.billing.test/oauth/token", "dev-client", "billing.secret")


def test_a_full_source_reads_back() -> None:
    (source,) = parse_sources(
        """
tokens:
  - name: billing
    hosts: [api.billing.test]
    origins: [https://app.billing.test]
    token_url: https://auth.billing.test/oauth/token
    grant: refresh_token
    client_id: dev-client
    client_secret: billing.secret
    refresh_token: billing.refresh
    auth_method: client_secret_post
    scope: "invoices:read"
    audience: https://api.billing.test
    refresh_on: [401, 403]
""",
        "tokens.yaml",
    )
    assert source == TokenSource(
        "billing", ("api.billing.test",), "https://auth.billing.test/oauth/token", "dev-client", "billing.secret",
        refresh_token="billing.refresh", grant="refresh_token", auth_method="client_secret_post", scope="invoices:read",
        audience="https://api.billing.test", origins=("https://app.billing.test",), refresh_on=(401, 403),
    )
    assert source.credential_keys() == ["billing.secret", "billing.refresh"]
    assert source.keys() == ("billing", "billing.token_type")
    assert source.endpoint() == Destination("auth.billing.test", "https", port=443)


def test_defaults_are_client_credentials_with_basic_auth_and_401() -> None:
    (source,) = parse_sources(
        "tokens:\n  - {name: t, hosts: [a.test], token_url: 'http://127.0.0.1:9/t', client_id: c, client_secret: s}\n", "f",
    )
    assert (source.grant, source.auth_method, source.refresh_on, source.refresh_token) == ("client_credentials", "client_secret_basic", (401,), None)
    assert source.endpoint() == Destination("127.0.0.1", "http", port=9)


@pytest.mark.parametrize(
    "entry, line, says",
    [
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c}", 2, "tokens[0].client_secret: missing"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: 's p'}", 2, "must be a vault key"),
        ("  - {name: t, hosts: [], token_url: 'https://x/t', client_id: c, client_secret: s}", 2, "must name at least one host"),
        ("  - {name: t.x, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s}", 2, "must not contain a dot"),
        ("  - {name: t, hosts: [a.test], token_url: 'ftp://x/t', client_id: c, client_secret: s}", 2, "must be an http(s) URL"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://u:p@x/t', client_id: c, client_secret: s}", 2, "must not hold credentials"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, grant: password}", 2, "must be one of"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, grant: refresh_token}", 2,
         "tokens[0].refresh_token: missing"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, refresh_on: [500]}", 2,
         "tokens[0].refresh_on[0]: must be one of 401, 403"),
        # read as a configuration's refresh_on is: statuses are numbers
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, refresh_on: ['401']}", 2,
         "tokens[0].refresh_on[0]: must be one of 401, 403"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, secret: x}", 2, "unknown field"),
        # a port out of range failed at the first mint, with a traceback (a review's)
        ("  - {name: t, hosts: [a.test], token_url: 'http://127.0.0.1:99999/t', client_id: c, client_secret: s}", 2,
         "tokens[0].token_url: must be an http(s) URL such as https://auth.example.com/oauth/token (Port out of range"),
        ("  - name: t\n    hosts: [a.test]]", 3, "invalid YAML"),
        # a shared file cannot quietly send a token anywhere, or to any page
        ("  - name: t\n    hosts: ['*']\n    token_url: 'https://x/t'\n    client_id: c\n    client_secret: s", 3,
         "tokens[0].hosts[0]: * matches nearly every host; add `allow_any_host: true`"),
        ("  - {name: t, hosts: ['*.*.*.*'], token_url: 'https://x/t', client_id: c, client_secret: s}", 2, "matches nearly every host"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, origins: ['HTTPS://*']}", 2,
         "tokens[0].origins[0]: https://* matches nearly every web page"),
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s, origins: ['localhost:3000']}", 2,
         "tokens[0].origins[0]: invalid origin"),
        ("  - {name: t, hosts: ['*'], token_url: 'https://x/t', client_id: c, client_secret: s, allow_any_host: 'yes'}", 2,
         "tokens[0].allow_any_host: must be true or false"),
        # nor drive the terminal of whoever lists it (`vaultproxy status`)
        ("  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: \"c\\e]0;owned\\a\", client_secret: s}", 2,
         "tokens[0].client_id: must not hold control characters"),
        ("  - {name: t, hosts: [a.test], token_url: \"https://x/t\\r\", client_id: c, client_secret: s}", 2,
         "tokens[0].token_url: must not hold control characters"),
        ("  - {name: t, \"x\\e[2J\": 1, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s}", 2,
         "tokens[0].'x\\x1b[2J': unknown field"),
        # a second `hosts` would quietly win, below the one a reader checks
        ("  - name: t\n    hosts: [a.test]\n    token_url: 'https://x/t'\n    hosts: ['*.**']\n    allow_any_host: true", 5,
         "tokens[0].hosts: appears twice"),
    ],
)
def test_a_broken_source_names_the_file_line_and_field(entry: str, line: int, says: str) -> None:
    with pytest.raises(TokenSourceError) as error:
        parse_sources(f"tokens:\n{entry}\n", "/home/me/tokens.yaml")
    assert str(error.value).startswith(f"/home/me/tokens.yaml:{line}:"), str(error.value)
    assert says in str(error.value) and "\x1b" not in str(error.value)


def test_a_source_for_any_host_or_page_says_so() -> None:
    (source,) = parse_sources(
        "tokens:\n  - {name: t, hosts: ['*'], origins: ['https://*'], token_url: 'https://x/t', client_id: c, "
        "client_secret: s, allow_any_host: true}\n", "tokens.yaml")
    assert source.hosts == ("*",) and source.origins == ("https://*",)


def test_two_sources_may_not_share_a_name() -> None:
    entry = "  - {name: t, hosts: [a.test], token_url: 'https://x/t', client_id: c, client_secret: s}\n"
    with pytest.raises(TokenSourceError, match=r"f:3: tokens\[1\].name: 't' is already used"):
        parse_sources("tokens:\n" + entry * 2, "f")


def test_a_token_is_renewed_a_tenth_of_its_lifetime_early_at_most_a_minute() -> None:
    short = Token.issued("a", "Bearer", 10, at=1000.0)
    assert short.renew_at == pytest.approx(1009.0)
    assert short.usable(1008.9) and not short.usable(1009.0)
    hour = Token.issued("a", "Bearer", 3600, at=1000.0)
    assert hour.renew_at == pytest.approx(1000.0 + 3600 - 60)
    forever = Token.issued("a", "Bearer", None, at=1000.0)
    assert forever.expires_at == math.inf and forever.usable(1e12)


def test_a_token_never_shows_in_a_repr() -> None:
    assert "s3cr3t-token" not in repr(Token.issued("s3cr3t-token", "Bearer", 60, at=0.0))


def index_with(token: Token | None) -> SecretIndex:
    return SecretIndex(local_secrets=[Secret("other", "x", ("api.billing.test",))]).overlaid(source_secrets(SOURCE, token))


def test_the_index_asks_for_a_mint_until_a_token_is_held() -> None:
    with pytest.raises(SubstitutionError) as error:
        index_with(None).check("billing", Destination("api.billing.test"))
    assert error.value.code == MINT_NEEDED
    token = Token.issued("fresh-token", "Bearer", 3600, at=time.time())
    index = index_with(token)
    assert index.check("billing", Destination("api.billing.test")).value == "fresh-token"
    assert index.check("billing.token_type", Destination("api.billing.test")).value == "Bearer"
    assert index.check("other", Destination("api.billing.test")).value == "x"  # the vault's keys stay


def test_a_token_past_its_renewal_time_is_never_handed_out() -> None:
    stale = Token.issued("old-token", "Bearer", 10, at=time.time() - 9.5)
    with pytest.raises(SubstitutionError) as error:
        index_with(stale).check("billing", Destination("api.billing.test"))
    assert error.value.code == MINT_NEEDED


@pytest.mark.parametrize(
    "destination, code",
    [
        (Destination("evil.test"), "host_not_allowed"),
        (Destination("api.billing.test", origin="https://evil.test"), "origin_not_allowed"),
        (Destination("api.billing.test", "http"), "plaintext_not_allowed"),
    ],
)
def test_a_destination_the_token_may_not_go_to_never_causes_a_mint(destination: Destination, code: str) -> None:
    """The rules are checked before the mint: a hostile page or host cannot make the proxy
    spend its client secret."""
    with pytest.raises(SubstitutionError) as error:
        index_with(None).check("billing", destination)
    assert error.value.code == code


def endpoint_index(*secrets: Secret) -> SecretIndex:
    return SecretIndex(provider_secrets=[s for s in secrets if s.source != "local"], local_secrets=[s for s in secrets if s.source == "local"])


def test_credentials_go_only_where_their_own_rules_allow() -> None:
    source = TokenSource("t", ("api.test",), "https://auth.test/token", "c", "t.secret", refresh_token="t.refresh", grant="refresh_token")
    allowed = endpoint_index(Secret("t.secret", "s", ("auth.test",)), Secret("t.refresh", "r", ("auth.test",)))
    assert credentials(source, allowed, allow_plaintext=False, verified=True) == {"t.secret": "s", "t.refresh": "r"}

    elsewhere = endpoint_index(Secret("t.secret", "s", ("api.test",)), Secret("t.refresh", "r", ("auth.test",)))
    with pytest.raises(SubstitutionError) as error:
        credentials(source, elsewhere, allow_plaintext=False, verified=True)
    assert error.value.code == "host_not_allowed" and error.value.key == "t" and "cannot be minted" in str(error.value)
    with pytest.raises(SubstitutionError) as error:  # an unverified certificate counts as plain text
        credentials(source, allowed, allow_plaintext=False, verified=False)
    assert error.value.code == "plaintext_not_allowed"


def test_a_refresh_token_the_proxy_could_not_rewrite_is_refused() -> None:
    source = TokenSource("t", ("api.test",), "https://auth.test/token", "c", "t.secret", refresh_token="aws.refresh", grant="refresh_token")
    index = endpoint_index(Secret("t.secret", "s", ("auth.test",)), Secret("aws.refresh", "r", ("auth.test",), source="prod"))
    with pytest.raises(SubstitutionError, match="must be a local secret.*move-to-local aws") as error:
        credentials(source, index, allow_plaintext=False, verified=True)
    assert error.value.code == TOKEN_UNAVAILABLE


def test_status_says_when_a_token_source_takes_a_vault_keys_name(tmp_path: Path) -> None:
    """`<<vault:billing>>` is the token source's once tokens.yaml names one `billing`: the
    vault key of that name would otherwise be silently unreachable."""
    vault = Vault(tmp_path)
    vault.set("billing", "FAKE-local-billing-key", hosts=["api.example.com"])
    vault.set("billing.client_secret", "FAKE-client-secret", hosts=["auth.example.com"])
    (tmp_path / "tokens.yaml").write_text(
        "tokens:\n  - {name: billing, hosts: [api.example.com], token_url: 'https://auth.example.com/token',"
        " client_id: c, client_secret: billing.client_secret}\n"
    )
    rows = {row["key"]: row for row in vault.status()["keys"]}
    assert rows["billing"]["shadowed_by"] == "tokens.yaml (a token source's name)"
    assert "shadowed_by" not in rows["billing.client_secret"]
