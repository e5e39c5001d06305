"""`vaultproxy completion bash|zsh|fish`: the shell code that completes vaultproxy's
commands, options and configuration names, made by argcomplete from the parser itself."""

from __future__ import annotations

import argparse
from typing import Any

from vaultcore.cli import command
from vaultcore.vault import Vault

SHELLS = ("bash", "zsh", "fish")


def cmd_completion(vault: Vault, args: argparse.Namespace) -> int:
    import argcomplete  # only this command and completing itself need it

    print(argcomplete.shellcode(["vaultproxy"], shell=args.shell), end="")
    return 0


def register(commands: Any) -> None:
    p = command(commands, "completion", cmd_completion, "print the shell code that completes vaultproxy's words", [
        "eval \"$(vaultproxy completion bash)\"          # in ~/.bashrc",
        "eval \"$(vaultproxy completion zsh)\"           # in ~/.zshrc",
        "vaultproxy completion fish | source            # in ~/.config/fish/config.fish",
    ])
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
