"""Prefix-cache salts of requests in an engine with map sets.

vLLM shares KV-cache blocks between requests whose token prefix and ``cache_salt`` are equal, so
the salt is what keeps blocks computed under one steering from being read under another. Every
salt this module gives is in one of two disjoint name spaces, so no client-chosen salt can equal
the salt of a steered request:

- a steered request: ``"act_fast:" + sha256 hex`` over an unambiguous (length-prefixed) encoding
  of the client's salt, then the chain of ``(set name, sha256 of the set's map-file bytes, λ as
  float32 bits)`` it is steered by. The file digest makes a KV store that outlives the engine
  (offloading connectors, disaggregated prefill) miss blocks computed with an older map file; λ
  as float32 bits is exactly what the steering buffers hold (two λ equal in float32 steer alike).
  A chain of one pair is one map set; several pairs encode a composition of map sets.
- an unsteered request with a client salt: ``"client:" + the client's salt``. Unsteered requests
  without a salt keep none (they share blocks with each other, as in a plain vLLM engine).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from act_fast.vllm.requests import float32_bits

STEERED_PREFIX = "act_fast:"
CLIENT_PREFIX = "client:"
_DOMAIN = b"act_fast.vllm prefix-cache salt v1\x00"


def _field(data: bytes | None) -> bytes:
    """Length-prefixed bytes; None (no client salt) encodes differently from every string."""
    return b"\x00" if data is None else b"\x01" + struct.pack("<Q", len(data)) + data


def steered_salt(client_salt: str | None, chain: Sequence[tuple[str, bytes, float]]) -> str:
    """The salt of a request steered by ``chain``: ``(set name, 32-byte sha256 of its map file, λ)``
    in application order.

    Raises:
        ValueError: an empty chain or a file digest that is not 32 bytes.
        OverflowError: a λ that is not finite in float32.
    """
    if not chain:
        raise ValueError("a steered request's salt needs at least one (map set, λ) pair")
    h = hashlib.sha256(_DOMAIN)
    h.update(_field(None if client_salt is None else client_salt.encode("utf-8", "surrogatepass")))
    h.update(struct.pack("<I", len(chain)))
    for name, file_digest, strength in chain:
        if len(file_digest) != 32:
            raise ValueError(f"map set {name!r}: the file digest must be 32 bytes (sha256), got {len(file_digest)}")
        h.update(_field(name.encode("utf-8", "surrogatepass")))
        h.update(file_digest)
        h.update(float32_bits(strength))
    return STEERED_PREFIX + h.hexdigest()


def unsteered_salt(client_salt: str | None) -> str | None:
    """The salt of an unsteered request: None stays None, a client's salt moves to its own name space."""
    return None if client_salt is None else CLIENT_PREFIX + client_salt
