"""TCP state changes and per-cgroup flow accounting, from a container on loopback."""

import socket
import threading

import pytest
from capture import collect, events

N = 5  # prime
PAYLOAD = 1009  # bytes each connection sends


@pytest.fixture
def echo_server():
    """A loopback server that reads what a client sends and answers with one byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    received = []

    def serve():
        for _ in range(N):
            conn, _ = server.accept()
            with conn:
                data = b""
                while len(data) < PAYLOAD:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                received.append(len(data))
                conn.sendall(b"!")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    server.close()


def test_connections_show_as_tcp_states_and_flows(sensor, rig, echo_server):
    port, received = echo_server
    script = f"for i in {' '.join(['x'] * N)}; do head -c {PAYLOAD} /dev/zero | nc -w 2 127.0.0.1 {port}; done"
    result = rig.run(["/bin/sh", "-c", script], host_network=True)
    assert result.exit_code == 0, result.stderr
    assert received == [PAYLOAD] * N
    records = collect(sensor, result.cgroup_id)
    flows = [r for r in sensor.report() if r["kind"] == "flow" and r["container"]["cgroup_id"] == result.cgroup_id]

    syn_sent = [e["evt"] for e in events(records, "tcp_state") if e["evt"]["new"] == "SYN_SENT"]
    assert len(syn_sent) == N
    assert all(e["daddr"] == "127.0.0.1" and e["dport"] == port and e["old"] == "CLOSE" for e in syn_sent)

    outbound = [f["flow"] for f in flows if f["flow"]["remote_port"] == port]
    assert len(outbound) == N  # one per connection: each has its own local port
    for flow in outbound:
        assert flow["protocol"] == "tcp" and flow["remote"] == "127.0.0.1" and flow["family"] == "inet"
        assert flow["bytes_out"] >= PAYLOAD and flow["packets_out"] >= 3  # SYN, data, FIN at least
        assert flow["bytes_in"] > 0 and flow["packets_in"] >= 2
