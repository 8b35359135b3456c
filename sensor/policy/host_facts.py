"""What a policy knows of this host: its name, kernel and labels, and live state that
admission control cannot see: the cases this host holds of an image, and how many
containers of a workload run here now."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

CASES_FRESH_S = 1.0  # the case store is read at most this often


class HostFacts:
    def __init__(self, labels: dict[str, str], cases: Callable[[], list[dict]] | None = None):
        uname = os.uname()
        self.name, self.kernel, self.labels = uname.nodename, uname.release, dict(labels)
        self._cases = cases
        self._by_image: dict[str, int] = {}
        self._read_at = float("-inf")

    def of(self, container: dict, running: int) -> dict:
        """The `host` map a policy condition reads, for this container."""
        return {"name": self.name, "kernel": self.kernel, "labels": self.labels,
                "image_cases": self.image_cases(container), "running": running}

    def image_cases(self, container: dict) -> int:
        """Cases this host holds of the container's image (by name; by digest too)."""
        image = container.get("image") or {}
        if self._cases is None or not image:
            return 0
        if time.monotonic() - self._read_at > CASES_FRESH_S:
            counts: dict[str, int] = {}
            for case in self._cases():
                found = (case.get("container") or {}).get("image") or {}
                for key in {found.get("name"), found.get("digest")} - {None}:
                    counts[key] = counts.get(key, 0) + 1
            self._by_image, self._read_at = counts, time.monotonic()
        return max(self._by_image.get(image.get("name"), 0), self._by_image.get(image.get("digest"), 0))
