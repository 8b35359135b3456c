"""`mayfly run` as a background process, for the e2e tests and the benchmarks."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sensor.testing.containers import RigError, wait_until


class RunningSensor:
    """`python -m sensor run ARGS` in the background, its JSON logs in `workdir`; stdout
    on a terminal if asked, and pinned to one CPU if given. Its case store is
    `workdir/cases` and its control socket `self.control` (a short path of its own),
    unless ARGS say otherwise."""

    def __init__(self, workdir: Path, *args: str, tty: bool = False, cpu: int | None = None):
        self.cases = Path(workdir) / "cases"
        self.control = os.path.join(tempfile.mkdtemp(prefix="mayfly-", dir="/run"), "control.sock")
        defaults = [*(() if "--cases" in args else ("--cases", str(self.cases))),
                    *(() if "--control" in args else ("--control", self.control))]
        args = (*args, *defaults)
        self.log = Path(workdir) / "stderr.log"
        self.stderr = open(self.log, "w+")
        if tty:
            self.master, slave = pty.openpty()
            stdout = slave
        else:
            self.master, stdout = None, subprocess.PIPE
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", *args], stdout=stdout,
                                     stderr=self.stderr, preexec_fn=pin)
        if tty:
            os.close(slave)
        wait_until(self.started, timeout=90)
        # The control socket comes up just after the sensor says it started.
        wait_until(lambda: os.path.exists(self.control) or self.control not in args, timeout=10)

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in open(self.log)]

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise RigError(f"the sensor exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
        return any(e["event"] == "sensor started" for e in self.logs())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        output = b""
        if self.master is not None:
            while True:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the terminal closed with the sensor
                    break
                if not chunk:
                    break
                output += chunk
        self.proc.wait(timeout=60)
        shutil.rmtree(os.path.dirname(self.control), ignore_errors=True)
        if self.proc.returncode != 0:
            raise RigError(f"the sensor exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        return output.decode(errors="replace")
