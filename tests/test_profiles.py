"""Provider configuration files: schema, precise errors, round trip, the configs directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vaultcore.profiles import (
    ConfigDirectory,
    ConfigError,
    ProviderConfig,
    SecretMapping,
    dump_config,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
SOURCE = "configs/production.yaml"
FAKE_SECRET = "FAKE-sk_live_9f8e7d6c5b4a"

# Line numbers matter: the error tests below point at them.
BASE = """\
name: production
display_name: Production
provider: aws
region: us-east-1
credentials:
  source: static
endpoint_url: null
hosts: ["*.example.com"]
secrets:
  - alias: dbCredentials
    secret_id: prod/db
    mode: json
  - alias: stripeKey
    secret_id: prod/stripe
    mode: plaintext
    hosts: ["api.stripe.com"]
    origins: ["http://localhost:3000"]
    version_stage: AWSCURRENT
"""


def replaced(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


def full_config() -> ProviderConfig:
    return ProviderConfig(
        name="staging_2",
        display_name="Staging (EU): two",
        region="eu-west-1",
        credentials_source="profile",
        aws_profile="sso-staging",
        endpoint_url="http://127.0.0.1:4566",
        hosts=("*.staging.example.com", "localhost"),
        secrets=(
            SecretMapping("api/token", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-AbCdEf"),
            SecretMapping("db", "staging/db", mode="json", hosts=(), version_stage="AWSPREVIOUS"),
            SecretMapping("gh", "gh", hosts=("api.github.com",), origins=("http://localhost:3000", "https://app.test")),
        ),
    )


def test_documented_example_parses_with_defaults_applied() -> None:
    config = parse_config(BASE, SOURCE, expected_name="production")
    assert config.name == "production" and config.region == "us-east-1"
    assert config.credentials_source == "static" and config.aws_profile is None
    db, stripe = config.secrets
    assert db == SecretMapping("dbCredentials", "prod/db", mode="json")
    assert config.hosts_for(db) == ("*.example.com",)
    assert config.hosts_for(stripe) == ("api.stripe.com",)
    assert stripe.origins == ("http://localhost:3000",) and stripe.version_stage == "AWSCURRENT"


def test_minimal_file_gets_defaults() -> None:
    config = parse_config("name: dev\nregion: us-west-2\n", "dev.yaml")
    assert config == ProviderConfig(name="dev", display_name="dev", region="us-west-2")


def test_round_trip_keeps_every_field() -> None:
    config = full_config()
    text = dump_config(config)
    assert parse_config(text, "x.yaml", expected_name="staging_2") == config
    assert dump_config(parse_config(text, "x.yaml")) == text
    # An empty per-secret hosts list (bound nowhere) stays distinct from "use the defaults".
    assert parse_config(text, "x.yaml").mapping("db").hosts == ()
    assert parse_config(text, "x.yaml").mapping("api/token").hosts is None


def test_dump_uses_the_documented_key_order() -> None:
    keys = [line.split(":")[0] for line in dump_config(full_config()).splitlines() if not line.startswith(" ")]
    assert keys == ["name", "display_name", "provider", "region", "endpoint_url", "credentials", "hosts", "secrets"]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("example-*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid_and_round_trip(path: Path) -> None:
    config = parse_config(path.read_text(), str(path))
    assert config.secrets
    assert parse_config(dump_config(config), str(path)) == config


@pytest.mark.parametrize(
    ("text", "line", "field", "problem"),
    [
        pytest.param(replaced('hosts: ["*.example.com"]', 'hosts: ["*.example.com"'), 9, None, "invalid YAML",
                     id="malformed-yaml"),
        pytest.param(replaced("region: us-east-1", "region: 5"), 4, "region", "must be a non-empty string (got int)",
                     id="wrong-type"),
        pytest.param(replaced('hosts: ["*.example.com"]', 'hosts: "*.example.com"'), 8, "hosts", "must be a list, e.g. [\"api.example.com\"] (got a string)", id="hosts-not-list"),
        pytest.param(replaced("provider: aws", "provder: aws"), 3, "provder", "unknown field; valid fields: name,",
                     id="unknown-field"),
        pytest.param(replaced("    secret_id: prod/stripe", "    secretid: prod/stripe"), 14, "secrets[1].secretid",
                     "valid fields: alias, secret_id, mode, hosts, origins, version_stage", id="unknown-nested-field"),
        pytest.param(replaced("mode: plaintext", "mode: jsn"), 15, "secrets[1].mode",
                     "must be one of plaintext, json (got 'jsn')", id="bad-mode"),
        pytest.param(replaced("alias: stripeKey", "alias: stripe.key"), 13, "secrets[1].alias", "no '.'",
                     id="alias-with-dot"),
        pytest.param(replaced("alias: stripeKey", "alias: stripe key"), 13, "secrets[1].alias", "(got 'stripe key')",
                     id="alias-with-space"),
        pytest.param(replaced("alias: stripeKey", "alias: dbCredentials"), 13, "secrets[1].alias",
                     "already used", id="duplicate-alias"),
        pytest.param(replaced("display_name: Production", "display_name: Production\nregion: eu-west-1"), 5,
                     "region", "appears twice", id="duplicate-key"),
        pytest.param(replaced("name: production", "name: staging"), 1, "name", "must match the file name production.yaml",
                     id="name-mismatch"),
        pytest.param(replaced("name: production", "name: prod/x"), 1, "name", "must be 1-64 of", id="bad-name"),
        pytest.param(replaced("    secret_id: prod/db\n", ""), 10, "secrets[0].secret_id", "missing (required)",
                     id="missing-secret-id"),
        pytest.param(replaced("  source: static", "  source: profile"), 6, "credentials.profile",
                     "required with source: profile", id="profile-without-name"),
        pytest.param(replaced("  source: static", "  source: static\n  profile: dev"), 7, "credentials.profile",
                     "only used with source: profile", id="profile-with-static"),
        pytest.param(replaced("  source: static", "  source: vault"), 6, "credentials.source",
                     "must be one of static, profile, default", id="bad-source"),
        pytest.param(replaced('["api.stripe.com"]', '["https://api.stripe.com"]'), 16, "secrets[1].hosts[0]",
                     "not a URL", id="host-is-url"),
        pytest.param(replaced('["http://localhost:3000"]', '["http://localhost:3000/app"]'), 17,
                     "secrets[1].origins[0]", "without a path", id="origin-with-path"),
        # look-alike letters (a review's): the file reads api.stripe.com and app.example.com, the
        # rules match api.xn--strpe-p2e.com (a Cyrillic і) and xn--pp-6kc.example.com (a Cyrillic а)
        pytest.param(replaced('["api.stripe.com"]', '["api.str\u0456pe.com"]'), 16, "secrets[1].hosts[0]",
                     "must be written in ASCII (an international name in its IDNA form): write api.xn--strpe-p2e.com",
                     id="host-look-alike"),
        pytest.param(replaced('["http://localhost:3000"]', '["https://\u0430pp.example.com"]'), 17, "secrets[1].origins[0]",
                     "must be written in ASCII (an international name in its IDNA form): write https://xn--pp-6kc.example.com",
                     id="origin-look-alike"),
        pytest.param(replaced("endpoint_url: null", "endpoint_url: localhost:4566"), 7, "endpoint_url",
                     "http:// or https:// URL", id="endpoint-not-url"),
        # reads as AWS's own endpoint, sends to 127.0.0.1 (a review's: the user name hides the host)
        pytest.param(replaced("endpoint_url: null", "endpoint_url: http://secretsmanager.eu-west-1.amazonaws.com@127.0.0.1:18260"),
                     7, "endpoint_url", "must be the server's own URL", id="endpoint-with-user"),
        pytest.param(replaced("endpoint_url: null", "endpoint_url: 'http://127.0.0.1:4566/#'"), 7, "endpoint_url",
                     "must be the server's own URL", id="endpoint-with-fragment"),
        # urlsplit reads the host as vault.example.com, urllib3 as evil.test (a review's)
        pytest.param(replaced("endpoint_url: null", "endpoint_url: 'https://evil.test\\.vault.example.com'"), 7, "endpoint_url",
                     "must be the server's own URL", id="endpoint-with-backslash"),
        pytest.param(replaced("endpoint_url: null", "endpoint_url: 'https://vault.example.com:8200:443'"), 7, "endpoint_url",
                     "must be a valid URL", id="endpoint-with-two-ports"),
        pytest.param("name: production\nregion: us-east-1\nsecrets: prod/db\n", 3, "secrets", "must be a list",
                     id="secrets-not-list"),
    ],
)
def test_errors_name_file_line_and_field(text: str, line: int, field: str | None, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE, expected_name="production")
    message = str(caught.value)
    prefix = f"{SOURCE}:{line}: " + (f"{field}: " if field else "")
    assert message.startswith(prefix), message
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        pytest.param(BASE + f"aws_secret_access_key: {FAKE_SECRET}\n", 19, "aws_secret_access_key", id="top-level"),
        pytest.param(replaced("  source: static", f"  source: static\n  Secret_Access_Key: {FAKE_SECRET}"), 7,
                     "credentials.Secret_Access_Key", id="under-credentials"),
        pytest.param(replaced("    mode: json", f"    mode: json\n    value: {FAKE_SECRET}"), 13,
                     "secrets[0].value", id="value-in-secret"),
        pytest.param(replaced("hosts: [", f"extra: {{password: {FAKE_SECRET}}}\nhosts: ["), 8, "extra.password",
                     id="nested-anywhere"),
    ],
)
def test_credentials_in_a_file_are_refused_without_echoing_them(text: str, line: int, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}:{line}: {field}: ")
    assert "`vaultproxy config set-credentials production`" in message
    assert FAKE_SECRET not in message


def test_yaml_syntax_error_does_not_quote_the_file() -> None:
    text = replaced("display_name: Production", f'display_name: "{FAKE_SECRET}\n  bad: [')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}:")
    assert FAKE_SECRET not in str(caught.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n"])
def test_not_a_mapping_is_an_error_at_line_one(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{SOURCE}:1: "):
        parse_config(text, SOURCE)


def test_yaml_tags_are_not_constructed() -> None:
    text = replaced("region: us-east-1", "region: !!python/object/apply:os.system [echo]")
    with pytest.raises(ConfigError, match=rf"^{SOURCE}:4: region: must be a non-empty string"):
        parse_config(text, SOURCE)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(BASE + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
                     + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)), 19,
                     id="alias-bomb"),
        pytest.param("name: production\nx: &r [*r]\n", 2, id="self-reference"),
        pytest.param(replaced("secrets:", "base: &base {mode: json}\nsecrets:"), 9, id="anchor-alone"),
        pytest.param(replaced("    mode: json", "    <<: *base"), 12, id="alias-alone"),
    ],
)
def test_yaml_anchors_and_aliases_are_refused_at_their_line(text: str, line: int) -> None:
    """A shared file gains nothing by them, and they are how 500 bytes become 10^9 nodes (each
    alias walked where it is used) or a cycle."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}:{line}: anchors and aliases")


def test_a_file_over_a_mebibyte_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    padded = BASE + "#" * (1024 * 1024)
    with pytest.raises(ConfigError, match=rf"^{SOURCE}: too large .*1 MiB"):
        parse_config(padded, SOURCE)
    shared = tmp_path / "huge.yaml"
    shared.write_bytes(padded.encode() + b"\xc3\xa9" * (4 * 1024 * 1024))  # read no further than the limit
    with pytest.raises(ConfigError, match=rf"^{shared}: too large"):
        ConfigDirectory(tmp_path / "configs").import_file(shared)
    assert parse_config(BASE + "#" * (1024 * 1024 - len(BASE) - 1) + "\n", SOURCE).name == "production"


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        pytest.param("display_name: Production", 'display_name: "Production\\e[8m"', 2, "display_name", id="escape"),
        pytest.param("    secret_id: prod/db", '    secret_id: "prod/db\\r\\e[2Kprod/x"', 11, "secrets[0].secret_id", id="cr"),
        pytest.param("endpoint_url: null", 'endpoint_url: "https://127.0.0.1/\\e[8m"', 7, "endpoint_url", id="url-escape"),
        pytest.param("endpoint_url: null", 'endpoint_url: "https://127.0.0.1/\\x9b2J"', 7, "endpoint_url", id="url-c1"),
        pytest.param("    version_stage: AWSCURRENT", '    version_stage: "AWS\\x7f"', 18, "secrets[1].version_stage", id="del"),
        pytest.param("display_name: Production", "display_name: |\n  two\n  lines", 2, "display_name", id="newline"),
        pytest.param("display_name: Production", 'display_name: "tab\\there"', 2, "display_name", id="tab"),
        pytest.param("display_name: Production", 'display_name: "nul\\0"', 2, "display_name", id="nul"),
        pytest.param("  source: static", '  source: "static\\e"', 6, "credentials.source", id="choice"),
    ],
)
def test_control_characters_are_refused_in_every_string(old: str, new: str, line: int, field: str) -> None:
    """A listing shows these strings to a terminal, where an escape sequence could make a row
    say something else than the file does."""
    with pytest.raises(ConfigError) as caught:
        parse_config(replaced(old, new), SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}:{line}: {field}: must not hold control characters"), message
    assert message.isprintable()


def test_command_arguments_with_control_characters_are_refused() -> None:
    text = "name: cli\nprovider: command\nsecrets:\n  - alias: gh\n    command: [op, \"\\r\\e[2K  op read op://x\"]\n"
    with pytest.raises(ConfigError, match=rf"^{SOURCE}:5: secrets\[0\]\.command\[1\]: must not hold control characters"):
        parse_config(text, SOURCE)


def test_a_command_may_run_a_script_of_several_lines() -> None:
    """`sh -c` with a block scalar: tabs and line feeds are an argv's own (listings escape them)."""
    text = "name: cli\nprovider: command\nsecrets:\n  - alias: gh\n    command:\n      - sh\n      - -c\n      - |\n        set -e\n        \tpass show gh\n"
    assert parse_config(text, SOURCE).secrets[0].option("command") == ("sh", "-c", "set -e\n\tpass show gh\n")


def test_mapping_edits_are_by_alias() -> None:
    config = parse_config(BASE, SOURCE)
    assert config.mapping("nope") is None
    changed = config.with_secret(SecretMapping("stripeKey", "prod/stripe-v2"))
    assert [m.alias for m in changed.secrets] == ["dbCredentials", "stripeKey"]
    assert changed.mapping("stripeKey").secret_id == "prod/stripe-v2"
    added = config.with_secret(SecretMapping("new", "n"))
    assert [m.alias for m in added.secrets] == ["dbCredentials", "stripeKey", "new"]
    assert [m.alias for m in added.without_secret("stripeKey").secrets] == ["dbCredentials", "new"]
    assert config.mapping("stripeKey").secret_id == "prod/stripe"  # frozen: the original is untouched


def test_directory_save_load_list_remove(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path / "configs")
    assert directory.names() == []
    prod = parse_config(BASE, SOURCE)
    path = directory.save(prod)
    directory.save(full_config())
    assert path == tmp_path / "configs" / "production.yaml"
    assert stat.S_IMODE((tmp_path / "configs").stat().st_mode) == 0o700
    assert directory.names() == ["production", "staging_2"]
    assert directory.load("production") == prod
    assert directory.load_all() == [prod, full_config()]
    directory.remove("production")
    assert directory.names() == ["staging_2"]
    with pytest.raises(ConfigError, match="no configuration named production; `vaultproxy config list` shows them"):
        directory.load("production")
    with pytest.raises(ConfigError, match="no configuration named production"):
        directory.remove("production")


def test_directory_refuses_names_that_are_paths(tmp_path: Path) -> None:
    (tmp_path / "outside.yaml").write_text("name: outside\nregion: us-east-1\n")
    directory = ConfigDirectory(tmp_path / "configs")
    with pytest.raises(ConfigError, match="invalid configuration name"):
        directory.load("../outside")


def test_broken_file_names_its_path_and_line(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path)
    directory.save(full_config())
    broken = tmp_path / "production.yaml"
    broken.write_text(replaced("mode: plaintext", "mode: jsn"))
    with pytest.raises(ConfigError, match=rf"^{broken}:15: secrets\[1\]\.mode: "):
        directory.load_all()


def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path)
    path = directory.save(parse_config(BASE, SOURCE))
    with open(path, encoding="utf-8") as old_reader:
        directory.save(parse_config(BASE.replace("Production", "Renamed"), SOURCE))
        # A new file was renamed into place: a reader of the old one still sees all of it.
        assert old_reader.read() == dump_config(parse_config(BASE, SOURCE))
    assert directory.load("production").display_name == "Renamed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["production.yaml"]


def test_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = ConfigDirectory(tmp_path)
    path = directory.save(parse_config(BASE, SOURCE))
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        directory.save(parse_config(BASE.replace("Production", "Renamed"), SOURCE))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["production.yaml"]


def test_save_refuses_an_invalid_config_built_in_code(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path)
    path = directory.save(parse_config(BASE, SOURCE))
    before = path.read_bytes()
    bad = parse_config(BASE, SOURCE).with_secret(SecretMapping("has.dot", "x"))
    with pytest.raises(ConfigError, match=r"secrets\[2\]\.alias"):
        directory.save(bad)
    assert path.read_bytes() == before


def test_import_validates_then_saves_under_the_files_name(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path / "configs")
    shared = tmp_path / "shared-by-a-colleague.yaml"
    shared.write_text(BASE)
    imported = directory.import_file(shared)
    assert imported.name == "production"
    assert directory.load("production") == imported


def test_import_of_an_invalid_file_writes_nothing(tmp_path: Path) -> None:
    directory = ConfigDirectory(tmp_path / "configs")
    shared = tmp_path / "bad.yaml"
    shared.write_text(BASE + f"password: {FAKE_SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        directory.import_file(shared)
    assert str(caught.value).startswith(f"{shared}:19: password: ")
    assert not (tmp_path / "configs").exists()
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'missing.yaml'}: cannot read"):
        directory.import_file(tmp_path / "missing.yaml")
