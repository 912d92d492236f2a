"""API keys -> tenants. Keys are configured as SHA-256 hashes, never in clear text.

python -m larimar.serving.auth <key>     # prints the hash to put in the serve config
"""

from __future__ import annotations

import hashlib
import hmac
import sys

from pydantic import BaseModel, Field


class ApiKey(BaseModel):
    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_second: float | None = Field(None, gt=0, description="this key's rate limit (default: limits')")
    burst: int | None = Field(None, ge=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, keys: list[ApiKey]):
        self._keys = [(k.sha256, k.tenant) for k in keys]

    def tenant_for(self, presented: str | None) -> str | None:
        """The tenant owning this key, or None. Compares every hash in constant time."""
        if not presented:
            return None
        digest = hash_key(presented)
        tenant = None
        for stored, owner in self._keys:
            if hmac.compare_digest(stored, digest):
                tenant = owner
        return tenant


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m larimar.serving.auth <api-key>")
    print(hash_key(sys.argv[1]))
