"""Environment isolation: tests must not depend on the developer's proxies, AWS setup or vault."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ISOLATED_PREFIXES = ("AWS_", "VAULTPROXY_")
# Where child Pythons keep the bytecode they compile, when our environment tells them to keep
# none (PYTHONDONTWRITEBYTECODE, as some containers set): without a cache, each `vaultproxy`
# run compiles the project's modules again, a third of its time. Outside the source tree; set
# by the test session (conftest.py), None: children inherit our setting.
bytecode_cache: Path | None = None


def is_isolated(name: str) -> bool:
    """Variables a test process must not inherit: every *_PROXY (HTTP_PROXY, NO_PROXY, ...), AWS_*, VAULTPROXY_*."""
    upper = name.upper()
    return upper.endswith("_PROXY") or upper.startswith(ISOLATED_PREFIXES)


def aws_isolation(home: Path) -> dict[str, str]:
    """AWS settings that keep boto3 away from real AWS and the developer's files.

    The config and credentials files point into `home` (where none exist), and the EC2
    instance metadata lookup of the default credential chain is disabled: it would
    otherwise try 169.254.169.254, an address tests must never contact.
    """
    return {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
    }


def child_env(extra: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """The environment for a child process: ours minus isolated variables, plus `extra`.

    With `home`, HOME and XDG_CONFIG_HOME point there too, so a child that falls back to
    a default location (vaultproxy's config dir, ~/.aws) stays inside the test's tmp dir.
    """
    env = {name: value for name, value in os.environ.items() if not is_isolated(name)}
    env["PYTHONUNBUFFERED"] = "1"  # output reaches the log files as it is printed
    if bytecode_cache is not None and "PYTHONPYCACHEPREFIX" not in env and env.pop("PYTHONDONTWRITEBYTECODE", None):
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    if home is not None:
        env["HOME"] = str(home)
        env["XDG_CONFIG_HOME"] = str(home / ".config")
        env.update(aws_isolation(home))
    else:
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(extra or {})
    return env
