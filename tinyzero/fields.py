"""Per-field help for dataclasses, read from ``name: help`` lines in the class docstring.

Config sections and environment options both document their fields this way, so ``--help-config`` and
``tinyzero envs`` print the same words the code carries.
"""

from __future__ import annotations


def field_helps(cls: type) -> dict[str, str]:
    helps: dict[str, str] = {}
    for line in (cls.__doc__ or "").splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name.isidentifier():
            helps[name] = rest.strip()
    return helps
