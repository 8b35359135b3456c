"""The flight recorder: each container's last events, within its bounds and the total's."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.testing.events import batch_of, decoder, raw, syscall

from sensor.forensics.recorder import FlightRecorder

S = 1_000_000_000


def arrays(*records: bytes):
    split, _ = decoder().split(batch_of(*records))
    return split


def opens(cgroup_id: int, times: list[int]):
    return [syscall("openat", 3, ktime=t, dirfd=-100, name=f"/tmp/{t}", flags=0, header={"cgroup_id": cgroup_id})
            for t in times]


def kept_times(recorder: FlightRecorder, cgroup_id: int) -> list[int]:
    return sorted(t for rows in recorder.events(cgroup_id).get("syscall", []) for t in rows["hdr"]["ktime_ns"].tolist())


def test_each_container_keeps_its_own_last_events_and_the_host_none():
    recorder = FlightRecorder(max_events=5)
    recorder.add(arrays(*opens(1, [10, 30, 50, 70]), *opens(2, [20, 40]), *opens(3, [25])), hosts={3})
    recorder.add(arrays(*opens(1, [80, 90, 100]), raw("fork", ktime=95, cgroup_id=2, child_pid=7)))
    assert kept_times(recorder, 1) == [50, 70, 80, 90, 100]  # the last five
    assert kept_times(recorder, 2) == [20, 40] and len(recorder.events(2)["fork"][0]) == 1
    assert 3 not in recorder


def test_events_older_than_the_window_go_even_when_few():
    recorder = FlightRecorder(max_events=1000, max_age_s=10)
    recorder.add(arrays(*opens(1, [1 * S, 2 * S, 9 * S])))
    recorder.add(arrays(*opens(2, [15 * S])))  # time moves on for everyone
    assert kept_times(recorder, 1) == [9 * S]


def test_a_container_is_forgotten_a_grace_period_after_it_exits():
    recorder = FlightRecorder(max_age_s=1000, grace_s=5)
    recorder.add(arrays(*opens(1, [1 * S]), *opens(2, [1 * S])))
    recorder.exited(1, 2 * S)
    recorder.add(arrays(*opens(2, [6 * S])))
    assert 1 in recorder  # within its grace
    recorder.add(arrays(*opens(2, [8 * S])))
    assert 1 not in recorder and 2 in recorder


def test_the_total_bound_lets_the_oldest_go_first():
    row_bytes = len(arrays(*opens(1, [1]))["syscall"][0][0].tobytes())
    recorder = FlightRecorder(total_bytes=10 * row_bytes, max_age_s=1e6)
    for t in range(1, 16):
        recorder.add(arrays(*opens(1 + t % 3, [t])))
    assert recorder.bytes <= 10 * row_bytes and recorder.dropped == 5
    assert sorted(kept_times(recorder, 1) + kept_times(recorder, 2) + kept_times(recorder, 3)) == list(range(6, 16))


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="total_bytes"):
        FlightRecorder(total_bytes=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 50)), max_size=20), max_size=10),
       st.integers(1, 8), st.integers(5, 30))
def test_the_recorder_agrees_with_a_model(batches, max_events, max_age):
    """Per container: of its events, the last `max_events`, and of those the ones within
    `max_age` of the newest event seen in any batch; all its bytes counted."""
    recorder, seen, now = FlightRecorder(max_events=max_events, max_age_s=max_age / S, grace_s=1e6), {}, 0
    clock = 0
    for batch in batches:
        records = []
        for cgroup_id, step in batch:
            clock += step
            seen.setdefault(cgroup_id, []).append(clock)
            records += opens(cgroup_id, [clock])
        if records:
            recorder.add(arrays(*records))
            now = clock
            for cgroup_id, times in seen.items():
                seen[cgroup_id] = [t for t in times[-max_events:] if t >= now - max_age]
    for cgroup_id in (1, 2, 3):
        assert kept_times(recorder, cgroup_id) == seen.get(cgroup_id, [])
    assert recorder.bytes == sum(rows.nbytes for c in (1, 2, 3) for rows in recorder.events(c).get("syscall", []))
    assert all(np.all(np.diff(rows["hdr"]["ktime_ns"].astype(np.int64)) >= 0)
               for c in (1, 2, 3) for rows in recorder.events(c).get("syscall", []))


def test_events_drained_out_of_time_order_are_kept_in_it():
    """Records of one container from two CPUs come interleaved in a drained batch."""
    recorder = FlightRecorder(max_events=2, max_age_s=1e6)
    recorder.add(arrays(*opens(1, [30, 10, 20])))
    recorder.add(arrays(*opens(1, [50, 40]), *opens(2, [45])))
    assert [rows["hdr"]["ktime_ns"].tolist() for rows in recorder.events(1)["syscall"]] == [[40, 50]]
