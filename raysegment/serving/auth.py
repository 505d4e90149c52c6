"""Who may do what over HTTP: bearer tokens checked against a file of hashes.

The token file holds one `name role sha256-hex` line per client (`#` comments allowed); the tokens
themselves are never stored, in that file or in any config. Roles: `read` (segment, list domains)
and `admin` (everything read may, plus writes such as snapshots). `raysegment token add` makes a
token, prints it once and appends its hash.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from raysegment.errors import ConfigError
from raysegment.storage import sha256_hex

ROLES = ("read", "admin")  # each role may do what the roles before it may


@dataclass(frozen=True)
class Client:
    name: str
    role: str

    def may(self, needed: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


def hash_token(token: str) -> str:
    return sha256_hex(token.encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)


class TokenTable:
    """The clients of a token file, looked up by the hash of a presented token (constant-time compare)."""

    def __init__(self, entries: list[tuple[str, str, str]]) -> None:
        self.entries = entries  # (name, role, sha256 hex)

    @classmethod
    def read(cls, path: str | Path) -> TokenTable:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"token file {path} does not exist; create one with `raysegment token add NAME ROLE --file {path}`"
            )
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if (
                len(parts) != 3
                or parts[1] not in ROLES
                or len(parts[2]) != 64
                or not all(c in "0123456789abcdef" for c in parts[2])
            ):
                raise ConfigError(f"{path}:{number}: expected 'name role sha256-hex' with role in {ROLES}")
            entries.append((parts[0], parts[1], parts[2]))
        return cls(entries)

    def client(self, token: str) -> Client | None:
        digest = hash_token(token)
        found = None
        for name, role, stored in self.entries:  # compare against every entry: no early exit to time
            if hmac.compare_digest(digest, stored):
                found = Client(name, role)
        return found


def add_token(path: str | Path, name: str, role: str) -> str:
    """Append a new client to a token file (created 0600); returns the token, which is not stored."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"client name {name!r} must be a non-empty word")
    path = Path(path)
    if path.is_file() and any(e[0] == name for e in TokenTable.read(path).entries):
        raise ConfigError(f"{path} already has a client named {name!r}")
    token = new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{name} {role} {hash_token(token)}\n")
    return token
