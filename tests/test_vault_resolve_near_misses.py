"""`Vault.resolve` (the library's, and the CLI's, dry run of what the proxy sends) refuses text
that is almost a placeholder exactly as the proxy does."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultcore.placeholders import Context, SubstitutionError
from vaultcore.vault import Vault


@pytest.fixture
def vault(vault_home: Path) -> Vault:
    vault = Vault(vault_home)
    vault.set("tdemo", "sk_live_Zq9Resolve", hosts=["api.example.com"])
    return vault


@pytest.mark.parametrize(("text", "says"), [
    ("Bearer <<vault:tdemo|bas64>>", "unknown filter 'bas64'"),
    ("Bearer <<vault: tdemo>>", "spaces"),
    ("Bearer <<vault:tdemo >>", "spaces"),
    ("Bearer <<VAULT:tdemo>>", "lower case"),
])
def test_resolve_refuses_a_near_miss(vault: Vault, text: str, says: str) -> None:
    with pytest.raises(SubstitutionError, match=says) as info:
        vault.resolve(text + " <<vault:tdemo>>", "api.example.com")
    assert (info.value.code, info.value.key) == ("malformed_placeholder", "tdemo")
    assert "sk_live_Zq9Resolve" not in str(info.value)


def test_resolve_passes_what_is_no_near_miss(vault: Vault) -> None:
    assert vault.resolve("<<blocked-vault:tdemo>> <<vault:tdemo>>", "api.example.com") == "<<blocked-vault:tdemo>> sk_live_Zq9Resolve"
    assert vault.resolve("/p?k=%3C%3CVAULT%3Atdemo%3E%3E", "api.example.com", Context.RAW) == "/p?k=%3C%3CVAULT%3Atdemo%3E%3E"
    with pytest.raises(SubstitutionError, match="lower case"):
        vault.resolve("/p?k=%3C%3CVAULT%3Atdemo%3E%3E", "api.example.com", Context.URL)
