"""Lua scripts shipped as package data, one job each, called by SHA.

A read-modify-write of shared state always happens inside one script, never as
GET-then-SET from Python. Scripts take every key known before the call in
``KEYS``; keys derived from stored data are built from a prefix passed in ``ARGV``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError

__all__ = ["LuaScript"]

_Arg = str | bytes | int | float

#: A line ``-- include: other`` is replaced by ``other.lua`` (shared helpers).
_INCLUDE = re.compile(r"^-- include: (\w+)$", re.MULTILINE)


#: Where includes not found in a script's own package are looked up (shared helpers).
_SHARED = "tickerq._redis"


def _read(package: str, name: str) -> str:
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text("utf-8")


def _read_include(package: str, name: str) -> str:
    try:
        return _read(package, name)
    except FileNotFoundError:
        return _read(_SHARED, name)


class LuaScript:
    """One Lua script from a package's ``lua/`` directory, run with EVALSHA.

    A line ``-- include: helpers`` in the file is replaced by ``helpers.lua``
    (from the same package, else from ``tickerq._redis``'s shared helpers), so
    scripts can share Lua functions without a second round trip.

    The script body is sent only when the server does not know the SHA yet (a
    fresh or restarted server), so a call normally costs one round trip.

    Args:
        name: The file name without ``.lua``.
        package: The capability package whose ``lua/`` directory holds it.
    """

    def __init__(self, name: str, package: str) -> None:
        self.name = name
        self.source = _INCLUDE.sub(lambda match: _read_include(package, match.group(1)), _read(package, name))
        self.sha = hashlib.sha1(self.source.encode("utf-8"), usedforsecurity=False).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[_Arg] = ()) -> Any:
        """Run the script on ``client`` and return its raw reply."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"LuaScript({self.name!r})"
