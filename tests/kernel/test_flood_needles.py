"""A flood cannot hide the needle: an event that can match a rule of priority WARNING
or above arrives while its own cgroup floods the sensor with others."""

from capture import Poller, drain, own_cgroup, run_in_cgroup

from sensor import ProgramConfig, Sensor

FLOOD = 1_000_003  # prime


def shadow_rule(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- rule: Shadow read\n  desc: d\n  output: o\n  priority: WARNING\n"
                     "  condition: evt.type in (open, openat, openat2) and fd.name = /etc/shadow\n")
    return rules


def test_a_million_opens_cannot_hide_one_of_etc_shadow(tmp_path, fire):
    rules = shadow_rule(tmp_path)
    seen = []
    # A budget the flood is sure to exhaust, always enforced: without the needle, the
    # open of /etc/shadow would get through about once in 400 runs.
    config = ProgramConfig(flows=False, cgroup_rate=1000, cgroup_burst=50, ring_pressure=0)
    with Sensor(rules=[rules], config=config, on_record=seen.append, report_interval=3600,
                lost_interval=0) as sensor:
        poller = Poller(sensor)
        poller.start()
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "needle_in_flood", str(FLOOD)])
            poller.sync(60)
            limited = sensor.reports.cgroup_losses(cgroup_id)["rate_limited"]
    alerts = [r for r in seen if r["kind"] == "alert" and r["container"]["cgroup_id"] == cgroup_id]
    assert limited > FLOOD * 9 // 10  # the flood was held back: the needle had to get past that
    assert [a["evt"]["name"] for a in alerts] == ["/etc/shadow"]
    assert alerts[0]["evt"]["res"] >= 0


def test_a_needle_that_finds_the_ring_full_spills(tmp_path, fire):
    """No buckets, a one-page ring and nobody draining it during the flood: the ring is
    full long before the middle open, which takes the spill ring instead."""
    rules = shadow_rule(tmp_path)
    seen = []
    config = ProgramConfig(flows=False, ringbuf_pages=1, cgroup_rate=0)
    with Sensor(rules=[rules], config=config, on_record=seen.append, report_interval=3600,
                lost_interval=0) as sensor:
        with own_cgroup() as (path, cgroup_id):
            run_in_cgroup(path, [fire, "needle_in_flood", "10007"])
            drain(sensor)
            ring_full = sensor.reports.cgroup_losses(cgroup_id)["ring_full"]
    alerts = [r for r in seen if r["kind"] == "alert" and r["container"]["cgroup_id"] == cgroup_id]
    assert ring_full > 10007  # most opens and closes found no room
    assert [a["evt"]["name"] for a in alerts] == ["/etc/shadow"]
