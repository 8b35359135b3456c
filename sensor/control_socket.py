"""The running sensor's local control socket: `mayfly capture CONTAINER` asks the sensor
that `mayfly run` started to capture a container now; `mayfly mode` switches its
responses' mode, `mayfly thaw` thaws a container a response froze. A Unix socket, mode 0600 in a
0700 directory, that answers root only (its peer's credentials, SO_PEERCRED); one
JSON request per connection, one JSON answer."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from sensor import records
from sensor.log import get_logger

log = get_logger("control")

DEFAULT_PATH = "/run/mayfly/control.sock"
ANSWER_TIMEOUT_S = 120.0
_MAX_REQUEST = 4096


class ControlServer:
    """Serves `capture` requests with `capture(container_id) -> Future[manifest]`
    (Sensor.capture), `mode` requests with `mode(mode, rule)` (Sensor.set_mode) and
    `thaw` requests with `thaw(container_id)` (Sensor.thaw), until closed."""

    def __init__(self, path: str, capture: Callable[[str], Future] | None,
                 mode: Callable[[str | None, str | None], Future] | None = None,
                 thaw: Callable[[str], Future] | None = None):
        self.path, self.capture, self.mode, self.thaw = path, capture, mode, thaw
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)  # a directory it did not make keeps its mode
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left by a sensor that stopped
            else:
                raise OSError(f"{path}: another sensor answers on this control socket")
            finally:
                probe.close()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._socket.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._socket.listen(8)
        self._thread = threading.Thread(target=self._serve, name="mayfly-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._socket.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), name="mayfly-control-request", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid != 0:
                    log.warning("control request refused", uid=uid)
                    return _send(conn, {"error": "only root may control the sensor"})
                conn.settimeout(5)
                request = json.loads(_read_line(conn, _MAX_REQUEST))
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                if "mode" in request and self.mode is not None:
                    log.info("mode switched", mode=request["mode"], rule=request.get("rule"))
                    self.mode(request["mode"], request.get("rule")).result(ANSWER_TIMEOUT_S)
                    return _send(conn, {"mode": request["mode"], "rule": request.get("rule")})
                if isinstance(request.get("thaw"), str) and self.thaw is not None:
                    self.thaw(request["thaw"]).result(ANSWER_TIMEOUT_S)
                    return _send(conn, {"thawed": request["thaw"]})
                container_id = request.get("capture")
                if not isinstance(container_id, str) or not container_id or self.capture is None:
                    return _send(conn, {"error": 'the request is {"capture": CONTAINER_ID}, {"mode": MODE, '
                                                 '"rule": RULE or null} or {"thaw": CONTAINER_ID}'
                                        + ("" if self.capture else " (this sensor keeps no cases)")})
                log.info("capture asked for", container=container_id)
                manifest = self.capture(container_id).result(ANSWER_TIMEOUT_S)
                _send(conn, {"case": summary(manifest)})
            except (LookupError, RuntimeError, ValueError, FutureTimeout) as e:
                _send(conn, {"error": str(e) or type(e).__name__})
            except OSError as e:
                log.warning("control connection failed", error=str(e))


def summary(manifest: dict) -> dict:
    """What `mayfly capture` prints of a case."""
    return {key: manifest.get(key) for key in ("id", "container", "bytes", "complete", "missing", "timings", "error")
            if key in manifest}


def request(path: str, asked: dict, timeout_s: float = ANSWER_TIMEOUT_S + 5) -> dict:
    """Ask the sensor at `path`: {"capture": CONTAINER_ID}, {"mode": MODE, "rule": RULE}
    or {"thaw": CONTAINER_ID}; its answer ({"case": ...}, ..., or {"error": ...})."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(path)
        conn.sendall(json.dumps(asked).encode() + b"\n")
        return json.loads(_read_line(conn))


def _read_line(conn: socket.socket, limit: int | None = None) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if limit is not None and len(data) > limit:
            raise ValueError(f"the request is longer than {limit} bytes")
    return data.split(b"\n", 1)[0]


def _send(conn: socket.socket, answer: dict) -> None:
    conn.sendall(json.dumps(answer, default=records.json_default).encode() + b"\n")
