"""Domain names that rules compare addresses with (Falco's fd.sip.name and its kin):
resolved in the background, so that an address can say which of those names it has.
A name that does not resolve matches nothing."""

from __future__ import annotations

import socket
import threading

REFRESH_S = 30.0


class Domains:
    def __init__(self, refresh_s: float = REFRESH_S):
        self.refresh_s = refresh_s
        self._names: set[str] = set()
        self._by_address: dict[str, tuple[str, ...]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, names) -> None:
        """Resolve these names from now on (and again every refresh_s)."""
        with self._lock:
            new = set(names) - self._names
            self._names |= new
            if new and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mayfly-domains", daemon=True)
                self._thread.start()
        if new:
            self._wake.set()

    def names_of(self, address: str | None) -> tuple[str, ...]:
        return self._by_address.get(address, ()) if address else ()

    def resolve_now(self) -> None:
        by_address: dict[str, set[str]] = {}
        for name in sorted(self._names):
            try:
                infos = socket.getaddrinfo(name, None)
            except (OSError, UnicodeError):
                continue
            for info in infos:
                by_address.setdefault(info[4][0], set()).add(name)
        self._by_address = {address: tuple(sorted(names)) for address, names in by_address.items()}

    def _run(self) -> None:
        while True:
            self.resolve_now()
            self._wake.wait(self.refresh_s)
            self._wake.clear()


DOMAINS = Domains()  # one per process: fields read it, rule sets add to it
