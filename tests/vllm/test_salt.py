"""Prefix-cache salts (no vLLM needed): steered and client salts live in disjoint name spaces, and
the steered digest covers the client salt, set names, map-file bytes and λ in float32."""

import hashlib

import pytest

from act_fast.vllm.salt import CLIENT_PREFIX, STEERED_PREFIX, steered_salt, unsteered_salt

D1 = hashlib.sha256(b"file one").digest()
D2 = hashlib.sha256(b"file two").digest()


def test_no_client_salt_can_equal_a_steered_salt():
    steered = steered_salt(None, [("a", D1, 1.0)])
    assert steered.startswith(STEERED_PREFIX)
    # A client that knows the steered salt (or the old "act_fast:<set>:<λ>" form) and sends it:
    for client in (steered, "act_fast:a:1.0", "", "x"):
        assert unsteered_salt(client) == CLIENT_PREFIX + client != steered
        assert unsteered_salt(client).startswith(CLIENT_PREFIX)
    assert unsteered_salt(None) is None


def test_digest_separates_every_field():
    base = steered_salt(None, [("a", D1, 0.5)])
    variants = [
        steered_salt("", [("a", D1, 0.5)]),  # empty client salt differs from none
        steered_salt("t", [("a", D1, 0.5)]),
        steered_salt(None, [("b", D1, 0.5)]),
        steered_salt(None, [("a", D2, 0.5)]),  # other map-file bytes under the same name
        steered_salt(None, [("a", D1, 0.25)]),
        steered_salt(None, [("a", D1, 0.5), ("b", D2, 1.0)]),  # a chain (composition)
        steered_salt(None, [("b", D2, 1.0), ("a", D1, 0.5)]),  # order of application matters
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_encoding_is_unambiguous_across_field_boundaries():
    # Names and client salts are length-prefixed: shifting characters between them changes the salt.
    assert steered_salt("ab", [("c", D1, 1.0)]) != steered_salt("a", [("bc", D1, 1.0)])
    assert steered_salt(None, [("ab", D1, 1.0)]) != steered_salt(None, [("a", D1, 1.0), ("b", D1, 1.0)])


def test_strengths_equal_in_float32_share_a_salt():
    assert steered_salt(None, [("a", D1, 0.1)]) == steered_salt(None, [("a", D1, 0.1 + 1e-12)])
    assert steered_salt(None, [("a", D1, 0.1)]) != steered_salt(None, [("a", D1, 0.1 + 1e-6)])


def test_bad_chains_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        steered_salt(None, [])
    with pytest.raises(ValueError, match="32 bytes"):
        steered_salt(None, [("a", b"short", 1.0)])
    with pytest.raises(OverflowError):
        steered_salt(None, [("a", D1, 1e39)])
