"""Who may talk to the server: loopback binds, the MRD client allow-list, the HTTP token.

Both of ``mr0-server``'s ports bind to localhost unless told otherwise. Bound elsewhere:

- the HTTP port (status page, JSON API, ``/metrics``) needs a bearer token
  (:func:`load_token`), checked in constant time (:func:`token_matches`);
- the MRD port can be limited to client addresses (:func:`parse_allow`, :func:`allowed`).
  An MRD client cannot send a token (the protocol has no place for one), so the address is
  what there is; for more, wrap the port in TLS with client certificates (``docker/README.md``).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

__all__ = [
    "MIN_TOKEN_CHARS",
    "TOKEN_ENV",
    "AccessError",
    "Network",
    "allowed",
    "is_loopback",
    "load_token",
    "parse_allow",
    "token_matches",
]

TOKEN_ENV = "MR0_HTTP_TOKEN"
"""Environment variable that can hold the HTTP token."""

MIN_TOKEN_CHARS = 16
"""Shortest token accepted (a token is a secret, not a password to remember)."""

_MAX_TOKEN_CHARS = 4096
_MAX_ALLOW_ENTRIES = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessError(ValueError):
    """A bad access setting (token, allow-list)."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` reaches this machine only (``localhost``, ``127.0.0.0/8``, ``::1``).

    Any other name counts as non-local: it is not resolved, so that a name pointing elsewhere
    cannot pass for local.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_allow(text: str | list[str] | None) -> list[Network]:
    """Parse an allow-list: addresses or CIDR networks, comma- or space-separated.

    ``"10.0.0.0/8, 192.168.1.7 ::1"`` → three networks (a bare address is a /32 or /128).

    Raises
    ------
    AccessError
        An entry that is not an address or network (host bits set count as an error: write the
        network), or more than 256 entries.
    """
    if text is None:
        return []
    parts = text if isinstance(text, list) else [text]
    entries = [e for part in parts for e in part.replace(",", " ").split()]
    if len(entries) > _MAX_ALLOW_ENTRIES:
        raise AccessError(f"the allow-list has {len(entries)} entries, at most 256")
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise AccessError(f"allow-list entry {entry[:64]!r} is not an address or network: "
                              f"{exc}") from None  # fmt: skip
    return nets


def allowed(address: str, networks: list[Network]) -> bool:
    """Whether a peer address lies in one of ``networks`` (an empty list allows everyone).

    An IPv4 client on a dual-stack socket (``::ffff:10.1.2.3``) is matched as its IPv4
    address. A peer that is not an IP address (a Unix socket) is refused by a non-empty list.
    """
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def load_token(path: Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """Return the HTTP token from ``path`` (its first line) or ``$MR0_HTTP_TOKEN``, else None.

    Raises
    ------
    AccessError
        The file cannot be read, or the token is shorter than :data:`MIN_TOKEN_CHARS`, longer
        than 4096 characters, or holds whitespace or control characters.
    """
    env = os.environ if environ is None else environ
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessError(f"cannot read the token file {path}: {exc}") from None
        token, where = (text.splitlines() or [""])[0].strip(), f"token file {path}"
    elif env.get(TOKEN_ENV):
        token, where = env[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not MIN_TOKEN_CHARS <= len(token) <= _MAX_TOKEN_CHARS:
        raise AccessError(
            f"the {where} holds {len(token)} characters; a token needs {MIN_TOKEN_CHARS} to "
            f"{_MAX_TOKEN_CHARS} (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise AccessError(f"the {where} holds whitespace or control characters")
    return token


def token_matches(given: str | None, token: str) -> bool:
    """Compare a presented token with the server's in constant time."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))
