"""`mayfly run` as a process for the e2e tests."""

import json
import os
import pty
import signal
import subprocess
import sys

from sensor.testing.containers import wait_until


class RunningSensor:
    """`python -m sensor run ARGS` in the background; stdout on a terminal if asked."""

    def __init__(self, tmp_path, *args, tty=False):
        self.log = tmp_path / "stderr.log"
        self.stderr = open(self.log, "w+")
        if tty:
            self.master, slave = pty.openpty()
            stdout = slave
        else:
            self.master, stdout = None, subprocess.PIPE
        self.proc = subprocess.Popen([sys.executable, "-m", "sensor", "run", *args], stdout=stdout,
                                     stderr=self.stderr)
        if tty:
            os.close(slave)
        wait_until(self.started, timeout=90)

    def logs(self):
        return [json.loads(line) for line in open(self.log)]

    def started(self):
        assert self.proc.poll() is None, open(self.log).read()
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
        assert self.proc.returncode == 0, open(self.log).read()
        return output.decode(errors="replace")
