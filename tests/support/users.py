"""Tests that act as another local user, `nobody`: as another user's process on the same
machine would (a listener squatting on a port, a client of the proxy). They need root."""

from __future__ import annotations

import os
import pwd

import pytest

try:
    NOBODY: pwd.struct_passwd | None = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None


def another_user(reason: str, *needs: bool) -> pytest.MarkDecorator:
    """Skip, saying `reason`, unless this runs as root, `nobody` exists and each of `needs` holds."""
    return pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None or not all(needs), reason=reason)
