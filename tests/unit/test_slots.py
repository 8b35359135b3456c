"""The open-addressing tables of sensor.detect.slots."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sensor.detect.slots import unique_inverse


@given(st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 100, 2**32]), max_size=300))
def test_unique_inverse_keeps_first_appearance_order(values):
    array = np.array(values, np.uint64)
    unique, inverse = unique_inverse(array)
    assert unique.tolist() == list(dict.fromkeys(values))
    assert unique[inverse].tolist() == values
