"""Text a peer chose, as the proxy and the CLI quote it (vaultcore/peertext.py): a token
endpoint's error, a provider's message, a command's standard error. Each may try to forge a
log line, drive the operator's terminal, or plant a placeholder in an answer a client reads."""

from __future__ import annotations

import json
import sys

import botocore.exceptions
import pytest

from tests.support.upstream import RecordingUpstream, Reply
from vaultcore.oauth import MintError, request_token
from vaultcore.peertext import LIMIT, quoted
from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers import aws, command, vault
from vaultcore.providers.base import ProviderError
from vaultcore.providers.vault import VaultCredentials
from vaultcore.tokens import TokenSource

FORGED = "refused\r\n[12:00:00.000] vaultproxy: resolved GET api.example.com/ [k]\x1b[2J\x1b]0;title\x07\u202e"


def test_quoted_text_stays_on_one_line_escapes_controls_and_neutralises_placeholders() -> None:
    shown = quoted(f"{FORGED} <<vault:prod_db>> %3C%3Cvault%3Aprod_db%3E%3E")
    assert shown.isprintable()
    assert shown == (
        "refused\\r\\n[12:00:00.000] vaultproxy: resolved GET api.example.com/ [k]\\x1b[2J\\x1b]0;title\\x07\\u202e"
        " <<blocked-vault:prod_db>> %3C%3Cblocked-vault%3Aprod_db%3E%3E"
    )
    assert quoted("plain text, kept as it is: é") == "plain text, kept as it is: é"
    assert quoted("x" * (LIMIT + 50)) == "x" * LIMIT + "..."


def test_an_aws_error_message_is_quoted_after_its_entities_are_read() -> None:
    xml = "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no&#10;[fake] line&#27;[31m &lt;&lt;vault:k&gt;&gt;</Message></Error></ErrorResponse>"
    error = botocore.exceptions.ClientError({"Error": {"Code": "403", "Message": xml}}, "GetSecretValue")
    # (html.unescape drops a reference to ESC, and reads one to a line feed)
    assert aws.service_error(error) == ("AccessDenied", "no\\n[fake] line[31m <<blocked-vault:k>>")


def test_a_commands_standard_error_is_quoted() -> None:
    said = "import sys; sys.stderr.write('\\x1b[2Jnot signed in <<vault:k>>\\n'); sys.exit(2)"
    config = ProviderConfig(name="cli", display_name="CLI", provider="command", credentials_source="default")
    result = command.fetch(config, [SecretMapping("token", options=(("command", (sys.executable, "-c", said)),))], None)["token"]
    assert result.error == f"{sys.executable} exited with status 2: \\x1b[2Jnot signed in <<blocked-vault:k>>"


@pytest.mark.parametrize("text", ["", "ok"])
def test_text_with_nothing_to_quote_is_unchanged(text: str) -> None:
    assert quoted(text) == text


@pytest.mark.parametrize("field", ["error", "error_description"])
def test_a_credential_a_token_endpoint_echoes_is_out_before_its_words_are_cut(field: str) -> None:
    """Cut first, a client secret across the cut stayed in part (the whole-value replace missed it):
    here it spans the 500th character of the message."""
    secret = "FAKE-client-secret-0123456789abcdefghijKLMN"
    with RecordingUpstream() as endpoint:
        endpoint.route("/token", Reply(status=401, body=json.dumps({"error": "invalid_client", field: "x" * 440 + " bad secret " + secret}).encode()))
        source = TokenSource("api", ("api.example.com",), f"{endpoint.url}/token", "cid", "api.secret")
        with pytest.raises(MintError) as refused:
            request_token(source, {"api.secret": secret})
    message = refused.value.message
    assert "FAKE-cli" not in message and "bad secret [red" in message  # the cut falls inside "[redacted]"


def test_a_vault_server_that_is_not_http_is_quoted() -> None:
    """http.client's error for a bad status line quotes it; it escaped the provider whole."""
    with RecordingUpstream() as server:
        server.route("/v1/auth/token/lookup-self", Reply(raw=lambda request: b"XTTP/1.1 200 \x1b[2J <<vault:prod_db>>\r\n\r\n"))
        config = ProviderConfig(name="team", display_name="Team", provider="vault", credentials_source="static",
                                secrets=(SecretMapping("x", "app/x"),), options=(("address", server.url),))
        with pytest.raises(ProviderError) as refused:
            vault.fetch(config, config.secrets, VaultCredentials(token="FAKE-vault-token-0001"))
        assert str(refused.value) == f"{server.url} sent a broken HTTP answer: XTTP/1.1 200 \\x1b[2J <<blocked-vault:prod_db>>\\r\\n"
