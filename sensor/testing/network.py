"""A test host on a veth pair, made with pyroute2: a network namespace for the peer
(with TCP listeners inside it) and one for a container to join (ContainerRig.create's
`netns`), linked by a /24."""

from __future__ import annotations

import socket
import threading
import uuid

from pyroute2 import IPRoute, NetNS, netns

PEER_ADDRESS, CONTAINER_ADDRESS, PREFIX = "10.213.0.1", "10.213.0.2", 24


class PeerHost:
    def __init__(self, ports: list[int]):
        tag = uuid.uuid4().hex[:6]
        self.peer_ns, self.container_ns = f"mf-peer-{tag}", f"mf-ctr-{tag}"
        self.accepted: dict[int, int] = dict.fromkeys(ports, 0)  # port -> connections accepted
        self._sockets: list[socket.socket] = []
        netns.create(self.peer_ns)
        netns.create(self.container_ns)
        try:
            with IPRoute() as ip:
                ip.link("add", ifname=f"mfp{tag}", kind="veth", peer=f"mfc{tag}")
                ip.link("set", index=ip.link_lookup(ifname=f"mfp{tag}")[0], net_ns_fd=self.peer_ns)
                ip.link("set", index=ip.link_lookup(ifname=f"mfc{tag}")[0], net_ns_fd=self.container_ns)
            for name, ifname, address in ((self.peer_ns, f"mfp{tag}", PEER_ADDRESS),
                                          (self.container_ns, f"mfc{tag}", CONTAINER_ADDRESS)):
                with NetNS(name) as ns:
                    index = ns.link_lookup(ifname=ifname)[0]
                    ns.addr("add", index=index, address=address, prefixlen=PREFIX)
                    ns.link("set", index=index, state="up")
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ready = threading.Event()
            threading.Thread(target=self._serve, args=(ready,), name="mayfly-test-host", daemon=True).start()
            ready.wait(10)
        except BaseException:
            self.close()
            raise

    def _serve(self, ready: threading.Event) -> None:
        netns.setns(self.peer_ns)  # this thread only: its sockets live in the peer's namespace
        for port in self.accepted:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((PEER_ADDRESS, port))
            server.listen(16)
            self._sockets.append(server)
            threading.Thread(target=self._accept, args=(server, port), daemon=True).start()
        ready.set()

    def _accept(self, server: socket.socket, port: int) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self.accepted[port] += 1
            conn.close()

    def close(self) -> None:
        for server in self._sockets:
            server.close()
        for name in (self.peer_ns, self.container_ns):
            try:
                netns.remove(name)  # the veth pair goes with its namespaces
            except OSError:
                pass

    def __enter__(self) -> PeerHost:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
