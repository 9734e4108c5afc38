"""Value checks of the ops (issue 21 items 5 and 13): the support pair is checked as a pair, and
messages name batch rows for λ."""

import pytest
import torch

import act_fast as af
from act_fast.ops.checks import check_values


def test_swapped_support_is_refused_after_both_were_checked_alone():
    x, w, b = torch.randn(3, 4), torch.full((4,), 2.0), torch.ones(4)
    lo, hi = -torch.ones(4), torch.ones(4)
    af.ops.affine_transport(x, w, b, 1.0, lo, hi)  # each checked (finite) and lo <= hi
    with pytest.raises(ValueError, match="lo > hi"):
        af.ops.affine_transport(x, w, b, 1.0, hi, lo)  # the same tensors, the other way round


def test_partners_validated_in_different_calls():
    lo1, hi1 = torch.zeros(4), torch.full((4,), 3.0)
    lo2, hi2 = torch.full((4,), 5.0), torch.full((4,), 6.0)
    check_values(lo=lo1, hi=hi1)
    check_values(lo=lo2, hi=hi2)
    with pytest.raises(ValueError, match=r"lo > hi .* at channels \[0, 1, 2, 3\]"):
        check_values(lo=lo2, hi=hi1)
    check_values(lo=lo1, hi=hi2)  # a good pair of checked tensors passes
    hi2[1] = -1.0  # an in-place change of one side is still caught
    with pytest.raises(ValueError, match=r"lo > hi .* at channels \[1\]"):
        check_values(lo=lo1, hi=hi2)


def test_a_checked_pair_is_not_read_again():
    lo, hi = torch.zeros(4), torch.ones(4)
    check_values(lo=lo, hi=hi)
    calls = []
    real = torch.Tensor.__gt__
    try:
        torch.Tensor.__gt__ = lambda a, b: calls.append(1) or real(a, b)
        check_values(lo=lo, hi=hi)
    finally:
        torch.Tensor.__gt__ = real
    assert calls == []


def test_strength_messages_name_batch_rows():
    x, w, b = torch.randn(3, 4), torch.ones(4), torch.zeros(4)
    with pytest.raises(ValueError, match=r"strength \(shape \[3\]\) holds NaN or Inf at batch rows \[2\]; λ must be finite"):
        af.ops.affine_transport(x, w, b, torch.tensor([0.5, 1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"strength \(a 0-d tensor\) is NaN or Inf; λ must be finite"):
        af.ops.affine_transport(x, w, b, torch.tensor(float("inf")))


def test_checked_tensors_still_save_and_copy():
    import copy
    import io
    import pickle

    lo, hi = torch.zeros(3), torch.ones(3)
    check_values(lo=lo, hi=hi)
    torch.save({"lo": lo, "hi": hi}, io.BytesIO())
    pickle.dumps(lo)
    assert torch.equal(copy.deepcopy(lo), lo)
