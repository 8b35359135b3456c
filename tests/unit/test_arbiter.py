"""The arbiter: kill budgets and their ladder per workload and window, the last-instance
guard, the disarmer, and modes set at run time over the policy's."""

from sensor.policy.policy_file import Settings
from sensor.respond.arbiter import Arbiter


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_spent_budget_steps_down_to_isolate_and_freeze_then_to_alert_only_and_recovers_after_the_window():
    clock = Clock()
    arbiter = Arbiter(Settings(kill_budget=2, budget_window_s=60, min_instances=0), clock)
    got = [arbiter.weigh("r", ("kill_container", "capture"), "shop", running=5) for _ in range(5)]
    assert [w.actions for w in got[:2]] == [("kill_container", "capture")] * 2
    assert all(w.downgraded is None for w in got[:2])
    assert [w.actions for w in got[2:4]] == [("isolate", "freeze", "capture")] * 2
    assert "kill budget spent: 3 destructive actions on workload shop within 60 s (budget 2)" in got[2].downgraded["why"]
    assert got[4].actions == ("capture",) and got[4].downgraded["to"] == ["alert"]
    # another workload has its own budget; and the window moves on
    assert arbiter.weigh("r", ("kill_process",), "cart", running=5).downgraded is None
    clock.now = 61
    assert arbiter.weigh("r", ("kill_container",), "shop", running=5).downgraded is None
    # what is not destructive is never weighed
    assert arbiter.weigh("r", ("freeze",), "shop", running=1).actions == ("freeze",)


def test_the_last_instance_guard_keeps_the_minimum_running():
    arbiter = Arbiter(Settings(min_instances=2, kill_budget=100))
    assert arbiter.weigh("r", ("kill_container",), "db", running=3).downgraded is None
    guarded = arbiter.weigh("r", ("kill_container",), "db", running=2)
    assert guarded.actions == ("isolate", "freeze") and "last-instance guard" in guarded.downgraded["why"]
    assert arbiter.weigh("r", ("kill_process",), "db", running=1).downgraded is None  # one process, not the workload


def test_the_disarmer_switches_a_rule_hitting_too_many_workloads_to_monitor():
    clock = Clock()
    arbiter = Arbiter(Settings(disarm_workloads=3, disarm_window_s=60, kill_budget=100, min_instances=0), clock)
    hits = [arbiter.weigh("noisy", ("kill_container",), f"w{i}", running=9).disarmed for i in range(5)]
    assert hits == [False, False, False, True, False]  # the fourth workload trips it, once
    assert arbiter.mode("noisy", None) == "monitor" and arbiter.mode("other", None) == "enforce"
    clock.now = 1000
    assert not arbiter.weigh("quiet", ("kill_container",), "w0", running=9).disarmed


def test_modes_set_at_run_time_come_before_the_responses_and_the_policys():
    arbiter = Arbiter(Settings(mode="monitor"))
    assert arbiter.mode("r", None) == "monitor" and arbiter.mode("r", "dry-run") == "dry-run"
    arbiter.override = "enforce"
    assert arbiter.mode("r", "dry-run") == "enforce"
    arbiter.modes["r"] = "dry-run"
    assert arbiter.mode("r", None) == "dry-run" and arbiter.mode("s", None) == "enforce"
