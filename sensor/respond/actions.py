"""The actions themselves, on a container's cgroup or one process: kill the process,
kill the container (cgroup.kill), freeze and thaw it, isolate its network (the
cgroup_skb programs drop its traffic but to the allowed destinations). A container frozen here is written down in a ledger directory (one file
per cgroup, with the sensor's pid), so that a sensor that stops, or one started after a
crash, releases it as the policy's failure mode says."""

from __future__ import annotations

import json
import os

from sensor.kernel.control import Kernel
from sensor.log import get_logger
from sensor.system.freezer import Freezer, FreezerError, kill_pid

log = get_logger("respond")

DEFAULT_LEDGER = "/run/mayfly/frozen"


class Actuator:
    def __init__(self, kernel: Kernel, ledger_dir: str, flows: bool):
        self.kernel = kernel
        self.ledger = ledger_dir
        self.flows = flows  # the cgroup_skb programs are attached: isolation works
        self.frozen: dict[int, str] = {}    # cgroup id -> its directory, frozen here
        self.isolated: set[int] = set()

    def set_allowed(self, destinations) -> None:
        """What an isolated container still reaches: (network, port or 0) pairs."""
        if self.flows:
            self.kernel.set_isolation_allowed(destinations)

    def do(self, action: str, cgroup_id: int, cgroup_dir: str, pid: int | None) -> str:
        """Do it; the outcome: "done", or why not."""
        try:
            if action == "kill_process":
                if pid is None:
                    return "failed: the alert names no process"
                return "done" if kill_pid(pid) else "gone already"
            if action == "kill_container":
                Freezer(cgroup_dir, pid).kill()
                self._unledger(cgroup_id)
                return "done"
            if action == "freeze":
                self._ledger(cgroup_id, cgroup_dir)
                Freezer(cgroup_dir, pid).freeze()
                return "done"
            if action == "isolate":
                if not self.flows:
                    return "failed: isolation needs the cgroup_skb programs (the sensor runs with --no-flows)"
                self.kernel.isolate(cgroup_id, True)
                self.isolated.add(cgroup_id)
                return "done"
        except (FreezerError, OSError) as e:
            return f"failed: {e}"
        raise ValueError(f"unknown action {action!r}")

    def thaw(self, cgroup_id: int, cgroup_dir: str) -> None:
        Freezer(cgroup_dir).thaw()
        self._unledger(cgroup_id)

    def gone(self, cgroup_id: int) -> None:
        """A removed cgroup: nothing of it is held any more."""
        self._unledger(cgroup_id)
        if cgroup_id in self.isolated:
            self.isolated.discard(cgroup_id)
            self.kernel.isolate(cgroup_id, False)

    def release_all(self, fail_open: bool) -> None:
        """The sensor stops: what it froze is thawed (fail open) or killed (fail closed)."""
        for cgroup_id, cgroup_dir in list(self.frozen.items()):
            _end(cgroup_dir, fail_open)
            self._unledger(cgroup_id)

    def recover(self, fail_open: bool) -> list[str]:
        """Containers a sensor that is gone left frozen (its pid no longer runs): ended
        as the failure mode says. Their directories."""
        ended = []
        for name in os.listdir(self.ledger) if os.path.isdir(self.ledger) else ():
            path = os.path.join(self.ledger, name)
            try:
                with open(path) as f:
                    entry = json.load(f)
                if _alive(entry["pid"]):
                    continue
                if os.path.isdir(entry["dir"]):
                    _end(entry["dir"], fail_open)
                    ended.append(entry["dir"])
                os.unlink(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("unusable frozen-ledger entry", path=path, error=str(e))
        return ended

    def _ledger(self, cgroup_id: int, cgroup_dir: str) -> None:
        self.frozen[cgroup_id] = cgroup_dir
        os.makedirs(self.ledger, mode=0o700, exist_ok=True)
        path = os.path.join(self.ledger, str(cgroup_id))
        with open(path + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "dir": cgroup_dir}, f)
        os.replace(path + ".tmp", path)

    def _unledger(self, cgroup_id: int) -> None:
        if self.frozen.pop(cgroup_id, None) is not None:
            try:
                os.unlink(os.path.join(self.ledger, str(cgroup_id)))
            except FileNotFoundError:
                pass


def _end(cgroup_dir: str, fail_open: bool) -> None:
    try:
        (Freezer(cgroup_dir).thaw if fail_open else Freezer(cgroup_dir).kill)()
    except (FreezerError, OSError) as e:
        log.warning("a frozen container could not be released", dir=cgroup_dir, error=str(e))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
