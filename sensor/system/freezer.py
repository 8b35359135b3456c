"""A cgroup's processes held still, let go or killed, all at once: cgroup2's
`cgroup.freeze` and `cgroup.kill`, or the v1 freezer's `freezer.state` where the
container's cgroup2 directory has no `cgroup.freeze` (docs/cases.md)."""

from __future__ import annotations

import os
import select
import signal
import time

V1_FREEZER = "/sys/fs/cgroup/freezer"
FREEZE_TIMEOUT_S = 2.0


class FreezerError(OSError):
    """A cgroup that could not be frozen, thawed or killed; the message says which and why."""


class Freezer:
    """The freezer of one cgroup2 directory (`cgroup_dir`, absolute). `pid`, one of its
    processes, finds the v1 freezer's directory when cgroup2 has no freezer there."""

    def __init__(self, cgroup_dir: str, pid: int | None = None):
        if os.path.exists(os.path.join(cgroup_dir, "cgroup.controllers")) and \
                not os.path.exists(os.path.join(cgroup_dir, "cgroup.events")):
            raise FreezerError(f"{cgroup_dir}: the root cgroup, which holds the host: never frozen or killed")
        self.dir = cgroup_dir
        self._v2 = os.path.exists(os.path.join(cgroup_dir, "cgroup.freeze"))
        self._v1 = None if self._v2 or pid is None else _v1_dir(pid)
        if not self._v2 and self._v1 is None:
            raise FreezerError(f"{cgroup_dir}: no cgroup.freeze, and no v1 freezer for it")

    @property
    def frozen(self) -> bool:
        """Whether every process in it is frozen now (by anyone)."""
        if self._v2:
            return _events(self.dir).get("frozen") == "1"
        return _read(os.path.join(self._v1, "freezer.state")).strip() == "FROZEN"

    def start_freezing(self) -> None:
        """Ask for it frozen, and return at once (`freeze` waits until it is)."""
        if self._v2:
            _write(os.path.join(self.dir, "cgroup.freeze"), "1")
        else:
            _write(os.path.join(self._v1, "freezer.state"), "FROZEN")

    def freeze(self, timeout_s: float = FREEZE_TIMEOUT_S) -> None:
        """Freeze it and wait until every process is (a stopped process counts)."""
        self._set(True, timeout_s)

    def thaw(self, timeout_s: float = FREEZE_TIMEOUT_S) -> None:
        self._set(False, timeout_s)

    def kill(self) -> None:
        """SIGKILL every process in it, frozen or not: cgroup.kill, or each pid in turn
        while it is frozen (v1: none can fork meanwhile)."""
        kill_file = os.path.join(self.dir, "cgroup.kill")
        if os.path.exists(kill_file):
            _write(kill_file, "1")
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def pids(self) -> list[int]:
        """Its processes (thread group leaders), as the cgroup lists them."""
        return [int(p) for p in _read(os.path.join(self.dir, "cgroup.procs")).split()]

    def _set(self, frozen: bool, timeout_s: float) -> None:
        if self._v2:
            _write(os.path.join(self.dir, "cgroup.freeze"), "1" if frozen else "0")
            _wait_events(self.dir, "1" if frozen else "0", timeout_s)
            return
        state = os.path.join(self._v1, "freezer.state")
        _write(state, "FROZEN" if frozen else "THAWED")
        deadline = time.monotonic() + timeout_s
        while _read(state).strip() != ("FROZEN" if frozen else "THAWED"):
            if time.monotonic() > deadline:
                raise FreezerError(f"{self._v1}: not {'frozen' if frozen else 'thawed'} after {timeout_s} s")
            time.sleep(0.0005)


def resume(pid: int) -> None:
    """SIGCONT a process stopped at a trigger (gone already: nothing to do)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def kill_pid(pid: int) -> bool:
    """SIGKILL a process; False when it was gone already."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _wait_events(cgroup_dir: str, want: str, timeout_s: float) -> None:
    """Until cgroup.events says `frozen want`: the kernel wakes a poller (POLLPRI) when
    it changes."""
    path = os.path.join(cgroup_dir, "cgroup.events")
    deadline = time.monotonic() + timeout_s
    fd = _open(path)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            if _parse(os.read(fd, 4096).decode()).get("frozen") == want:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise FreezerError(f"{cgroup_dir}: not {'frozen' if want == '1' else 'thawed'} after {timeout_s} s")
            poller.poll(max(1, int(left * 1000)))
    finally:
        os.close(fd)


def _v1_dir(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "freezer" in controllers.split(","):
                    directory = os.path.join(V1_FREEZER, path.lstrip("/"))
                    return directory if os.path.isdir(directory) else None
    except OSError:
        return None
    return None


def _events(cgroup_dir: str) -> dict[str, str]:
    return _parse(_read(os.path.join(cgroup_dir, "cgroup.events")))


def _parse(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise FreezerError(f"{path}: {e.strerror}") from None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise FreezerError(f"{path}: {e.strerror}") from None


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise FreezerError(f"{path}: {e.strerror}") from None
