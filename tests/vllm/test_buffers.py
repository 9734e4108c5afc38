"""Per-token λ / map-slot buffers (no vLLM needed)."""

import numpy as np
import torch

from act_fast.vllm.buffers import TokenControl


def test_fill_lays_requests_out_token_by_token_and_zeroes_the_rest():
    c = TokenControl(16, "cpu")
    c.fill(np.array([0, 2, 1]), np.array([0.0, 0.5, -1.0]), np.array([2, 3, 1]))
    assert c.map_index[:7].tolist() == [0, 0, 2, 2, 2, 1, 0]
    assert c.strength[:7].tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, -1.0, 0.0]
    # a shorter next step: everything past its tokens is back to the identity
    c.fill(np.array([1]), np.array([0.25]), np.array([2]))
    assert c.map_index.tolist() == [1, 1] + [0] * 14
    assert c.strength.tolist() == [0.25, 0.25] + [0.0] * 14


def test_addresses_never_change_and_unsteered_steps_reset():
    c = TokenControl(8, "cpu")
    ptrs = (c.strength.data_ptr(), c.map_index.data_ptr())
    c.fill(np.array([3, 3]), np.array([1.0, 1.0]), np.array([4, 4]))
    c.fill(np.array([0, 0]), np.array([0.0, 0.0]), np.array([1, 5]))
    assert (c.strength.data_ptr(), c.map_index.data_ptr()) == ptrs
    assert not c.strength.any() and not c.map_index.any()
    assert c.strength.dtype == torch.float32 and c.map_index.dtype == torch.int32


def test_step_larger_than_the_buffers_is_refused():
    c = TokenControl(4, "cpu")
    try:
        c.fill(np.array([1]), np.array([1.0]), np.array([5]))
    except ValueError as err:
        assert "5 tokens" in str(err) and "4 tokens" in str(err)
    else:
        raise AssertionError("a step of 5 tokens fit in 4")


def test_chain_buffers_hold_each_tokens_chain():
    """Several map sets: [tokens, S] slots and λ per token (issue 22); padding rows stay 0."""
    c = TokenControl(8, "cpu", width=2)
    assert c.map_index.shape == (8, 2) and c.strength.shape == (8, 2)
    c.fill(np.array([[1, 2], [0, 0], [2, 0]]), np.array([[0.75, 0.5], [0.0, 0.0], [1.0, 0.0]]), np.array([2, 1, 3]))
    assert c.map_index.tolist() == [[1, 2], [1, 2], [0, 0], [2, 0], [2, 0], [2, 0], [0, 0], [0, 0]]
    assert c.strength[:6, 0].tolist() == [0.75, 0.75, 0.0, 1.0, 1.0, 1.0]
    c.fill(np.array([[2, 1]]), np.array([[0.5, 0.25]]), np.array([1]))
    assert c.map_index.tolist() == [[2, 1]] + [[0, 0]] * 7
    assert c.strength[0].tolist() == [0.5, 0.25] and not c.strength[1:].any()
