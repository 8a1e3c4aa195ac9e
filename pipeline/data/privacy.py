"""Pseudonymisation: salted hashes stand in for patient identifiers everywhere downstream.

The salt is a setting (``--salt`` or the ``HDKD_SALT`` environment variable). ``DEMO_SALT`` is a
documented, public default that is only fit for the synthetic demo cohort: anyone who knows it can
test guesses of patient IDs against the hashes, so real data needs its own secret salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os

DEMO_SALT = "hdkd-demo-salt"
SALT_ENV = "HDKD_SALT"
HASH_CHARS = 16


def salted_hash(value: str, salt: str) -> str:
    """Keyed hash (HMAC-SHA256, first 16 hex digits) of ``value``: same value and salt, same hash."""
    if not salt:
        raise ValueError("the salt must be a non-empty string")
    digest = hmac.new(salt.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:HASH_CHARS]


def resolve_salt(cli_salt: str | None) -> tuple[str, bool]:
    """The salt (``--salt``, else ``HDKD_SALT``, else ``DEMO_SALT``) and whether it is the demo default."""
    salt = cli_salt or os.environ.get(SALT_ENV) or DEMO_SALT
    return salt, salt == DEMO_SALT
