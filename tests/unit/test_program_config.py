"""The programs' configuration as user space gives it to them."""

import pytest

from sensor.kernel.bpf_program import ProgramConfig


def test_user_space_is_woken_once_per_ring_page_of_records_by_default():
    """Batches of thousands (user space's cost is mostly per batch), whatever the ring."""
    assert ProgramConfig().wakeup_records == ProgramConfig().ringbuf_pages == 4096
    assert ProgramConfig(ringbuf_pages=64).kernel_config()["wakeup_every"][0] == 64
    assert ProgramConfig(ringbuf_pages=64, wakeup_every=8).kernel_config()["wakeup_every"][0] == 8


@pytest.mark.parametrize("field, value", [("wakeup_every", -1), ("ringbuf_pages", 3000), ("ring_pressure", 1.5)])
def test_bad_settings_are_refused_with_their_name(field, value):
    with pytest.raises(ValueError, match=field):
        ProgramConfig(**{field: value})
