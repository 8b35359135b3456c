"""The case store: each case a versioned msgpack manifest, its artifacts content-addressed
blobs (sha256: an artifact identical across containers is stored once), an sqlite index
of both, and a byte budget kept by letting the cases of least value go (docs/cases.md).

    root/index.sqlite3           the index: cases, blobs and which case holds which
    root/cases/<id>.msgpack      a sealed case's manifest
    root/blobs/<aa>/<sha256>     an artifact's bytes

Every file is written whole or not at all (a temporary file, fsync, rename, fsync of the
directory); directories are 0700 and files 0600. A case is opened in the index before
any of its blobs is written, and sealed by its manifest: one left open by a sensor that
stopped (a crash) is torn, reported as such and never read as whole. The store never
holds more than its budget: room for a new blob is made by letting go cases worth less
than the one being written, and an artifact there is no room for is listed as missing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack

from sensor.forensics import value
from sensor.log import get_logger
from sensor import records
from sensor.records import Record

log = get_logger("cases")

MANIFEST_VERSION = 1
DEFAULT_ROOT = "/var/lib/mayfly/cases"
DEFAULT_BUDGET = 1 << 30  # 1 GiB
OPEN, SEALED, TORN = "open", "sealed", "torn"
DISK_SLACK = 1 << 20  # free disk kept beside a case's reserve, for the index's journal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, opened REAL NOT NULL, sealed REAL,
    container TEXT NOT NULL, rule TEXT NOT NULL, priority TEXT NOT NULL, similar_key TEXT NOT NULL,
    severity REAL NOT NULL, similar INTEGER NOT NULL, weight REAL NOT NULL,
    locked INTEGER NOT NULL DEFAULT 0, manifest_bytes INTEGER NOT NULL DEFAULT 0, ttl_s REAL);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, refs INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refs (case_id TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (case_id, sha256));
CREATE INDEX IF NOT EXISTS cases_alike ON cases (similar_key);
"""


class StoreError(Exception):
    """A case that cannot be read or changed as asked; the message says which and why."""


class CaseStore:
    """The store at `root`. The sensor opens it as the writer (`writer=True`) and holds
    the store's lock while it runs. Commands that read or manage cases open it without.
    Whoever opens the store while no writer holds it finds the cases left open torn."""

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT, budget_bytes: int = DEFAULT_BUDGET,
                 writer: bool = False, clock: Callable[[], float] = time.time):
        if budget_bytes <= 0:
            raise ValueError(f"the case store's budget must be positive, not {budget_bytes}")
        self.root, self.budget, self.clock = Path(root), budget_bytes, clock
        for directory in (self.root, self.root / "cases", self.root / "blobs"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        index = self.root / "index.sqlite3"
        os.close(os.open(index, os.O_CREAT | os.O_RDWR, 0o600))
        self._db = sqlite3.connect(index, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        if "ttl_s" not in {row[1] for row in self._db.execute("PRAGMA table_info(cases)")}:
            self._db.execute("ALTER TABLE cases ADD COLUMN ttl_s REAL")  # a store from before retention classes
        self._lock: int | None = os.open(self.root / "writer.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            if writer:
                raise StoreError(f"{self.root}: another sensor writes to this case store") from None
            return  # a sensor is writing: its open cases are being written
        self._tear_left_open()
        if not writer:
            os.close(self._lock)
            self._lock = None

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ---- writing ----

    def open(self, container: dict, triggers: list[Record], rule: str, priority: str, exe_sha256: str = "",
             weight: float = 1.0, ttl_s: float | None = None) -> Case:
        """A new case, open until sealed. `rule` and `priority` are its trigger's (a case
        asked for by hand has none: priority value.NO_PRIORITY). `weight` and `ttl_s`:
        its retention class, set by the policy at its container's spawn (None: its
        priority's TTL)."""
        now = self.clock()
        case_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(4)
        key = value.similarity_key(rule, str(container.get("image") or ""), exe_sha256)
        with self._transaction() as db:
            similar = db.execute("SELECT COUNT(*) FROM cases WHERE similar_key = ? AND state = ?",
                                 (key, SEALED)).fetchone()[0]
            worth = value.Value(value.severity(priority), similar, weight)
            db.execute("INSERT INTO cases (id, state, opened, container, rule, priority, similar_key, severity, "
                       "similar, weight, ttl_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (case_id, OPEN, now, json.dumps(container, default=repr), rule, priority, key,
                        worth.severity, similar, weight, ttl_s))
        return Case(self, case_id, container, triggers, rule, priority, worth, now)

    def _put_blob(self, case: Case, data: bytes) -> str | None:
        """The blob of `data`, referenced by `case`: its sha256, or None when there is no
        room for it within the budget (no case worth less than `case` to let go)."""
        sha = hashlib.sha256(data).hexdigest()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM refs WHERE case_id = ? AND sha256 = ?", (case.id, sha)).fetchone():
                return sha
            if db.execute("UPDATE blobs SET refs = refs + 1 WHERE sha256 = ?", (sha,)).rowcount:
                db.execute("INSERT INTO refs VALUES (?, ?)", (case.id, sha))
                return sha
        if not self._make_room(len(data) + case.reserve, case):
            return None
        free = _free_bytes(self.root)
        if free < len(data) + case.reserve + DISK_SLACK:  # the disk fills before the budget: keep room to seal
            raise OSError(errno.ENOSPC, f"No space left on device for it ({free} bytes free)")
        path = self._blob_path(sha)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_whole(path, data)
        with self._transaction() as db:
            db.execute("INSERT INTO blobs VALUES (?, ?, 1) ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1",
                       (sha, len(data)))
            db.execute("INSERT INTO refs VALUES (?, ?)", (case.id, sha))
        return sha

    def _drop_blob(self, case: Case, sha: str) -> None:
        with self._transaction() as db:
            self._unref(db, case.id, sha)

    def _seal(self, case: Case, manifest: dict) -> int:
        """Write the manifest and mark the case sealed; its bytes. Artifacts the budget
        cannot hold with the manifest are let go, largest first, and listed as missing;
        a case whose manifest alone finds no room is not kept (0)."""
        while True:
            data = msgpack.packb(manifest, use_bin_type=True)
            if self._make_room(len(data), case):
                break
            if not manifest["artifacts"]:
                log.error("case not kept", case=case.id, why="no room for its manifest within the budget",
                          budget=self.budget)
                self.remove(case.id)
                return 0
            largest = max(manifest["artifacts"], key=lambda a: a["size"])
            manifest["artifacts"].remove(largest)
            if all(a["sha256"] != largest["sha256"] for a in manifest["artifacts"]):  # none other holds it
                self._drop_blob(case, largest["sha256"])
            manifest["missing"].append({"what": f"{largest['kind']} {largest['name']!r}",
                                        "why": "no room within the case store's budget"})
            manifest["complete"] = False
        _write_whole(self._manifest_path(case.id), data)
        with self._transaction() as db:
            db.execute("UPDATE cases SET state = ?, sealed = ?, manifest_bytes = ? WHERE id = ?",
                       (SEALED, manifest["timings"]["sealed"], len(data), case.id))
        return len(data)

    # ---- reading and managing ----

    def used_bytes(self) -> int:
        blobs = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
        return blobs + self._db.execute("SELECT COALESCE(SUM(manifest_bytes), 0) FROM cases").fetchone()[0]

    def list(self) -> list[dict]:
        """Every case, oldest first: id, state, container, trigger, bytes, score and its
        parts, locked."""
        now = self.clock()
        rows = self._db.execute(
            "SELECT id, state, opened, container, rule, priority, severity, similar, weight, locked, manifest_bytes,"
            " (SELECT COALESCE(SUM(b.size), 0) FROM refs r JOIN blobs b ON b.sha256 = r.sha256 WHERE r.case_id = id)"
            " FROM cases ORDER BY opened, rowid").fetchall()
        worth = [value.Value(severity, similar, weight).explain(now - opened)
                 for (_, _, opened, _, _, _, severity, similar, weight, *_) in rows]
        return [{"id": case_id, "state": state, "container": json.loads(container),
                 "trigger": {"rule": rule, "priority": priority}, "bytes": manifest_bytes + blob_bytes,
                 "score": parts["score"], "value": parts, "locked": bool(locked)}
                for parts, (case_id, state, _, container, rule, priority, _, _, _, locked, manifest_bytes,
                            blob_bytes) in zip(worth, rows)]

    def manifest(self, case_id: str) -> dict:
        """A sealed case's manifest, checked against the index and its blobs."""
        state = self._state(case_id)
        if state != SEALED:
            raise StoreError(f"case {case_id} is {state}: it was not sealed (its sensor stopped while writing it)"
                             if state == TORN else f"case {case_id} is still being written")
        path = self._manifest_path(case_id)
        try:
            manifest = msgpack.unpackb(path.read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException) as e:
            raise StoreError(f"case {case_id}: its manifest {path} cannot be read: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("id") != case_id or \
                manifest.get("manifest_version") != MANIFEST_VERSION:
            raise StoreError(f"case {case_id}: {path} is not this case's manifest (version {MANIFEST_VERSION})")
        row = self._db.execute("SELECT opened, severity, similar, weight FROM cases WHERE id = ?",
                               (case_id,)).fetchone()
        manifest["value"] = value.Value(*row[1:]).explain(self.clock() - row[0])
        return manifest

    def artifact(self, sha256: str) -> Iterator[bytes]:
        """An artifact's bytes, in chunks, checked against its sha256 as they are read."""
        digest = hashlib.sha256()
        try:
            with open(self._blob_path(sha256), "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    yield chunk
        except FileNotFoundError:
            raise StoreError(f"blob {sha256} is missing from {self.root / 'blobs'}") from None
        if digest.hexdigest() != sha256:
            raise StoreError(f"blob {sha256} is damaged: its bytes hash to {digest.hexdigest()}")

    def unpacked(self, manifest: dict, kind: str, name: str):
        """A msgpack artifact of a case (its timeline, its process tree...), unpacked;
        None if the case has none."""
        found = next((a for a in manifest["artifacts"] if a["kind"] == kind and a["name"] == name), None)
        if found is None:
            return None
        try:
            return msgpack.unpackb(b"".join(self.artifact(found["sha256"])), raw=False)
        except (ValueError, msgpack.UnpackException) as e:
            raise StoreError(f"case {manifest['id']}: its {kind} {name} cannot be read: {e}") from None

    def export(self, case_id: str, dest: str | os.PathLike) -> Path:
        """Every artifact of a case as a plain file under `dest` (by kind, then name, made
        safe: no name leaves `dest`), with the manifest as msgpack and JSON."""
        manifest = self.manifest(case_id)
        dest = Path(dest)
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        for artifact in manifest["artifacts"]:
            target = dest / safe_relative(artifact["kind"]) / safe_relative(artifact["name"])
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(target, "wb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW, 0o600)) as f:
                for chunk in self.artifact(artifact["sha256"]):
                    f.write(chunk)
        (dest / "manifest.msgpack").write_bytes(msgpack.packb(manifest, use_bin_type=True))
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, default=records.json_default))
        return dest

    def set_locked(self, case_id: str, locked: bool) -> None:
        self._state(case_id)
        with self._transaction() as db:
            db.execute("UPDATE cases SET locked = ? WHERE id = ?", (int(locked), case_id))

    def remove(self, case_id: str) -> None:
        """A case and the blobs no other case holds."""
        self._state(case_id)
        with self._transaction() as db:
            for (sha,) in db.execute("SELECT sha256 FROM refs WHERE case_id = ?", (case_id,)).fetchall():
                self._unref(db, case_id, sha)
            db.execute("DELETE FROM cases WHERE id = ?", (case_id,))
        self._manifest_path(case_id).unlink(missing_ok=True)

    def forget_unsealed(self, case_id: str) -> None:
        """A case that could not be sealed goes, as far as the disk lets it (what stays
        is found torn at the next start)."""
        try:
            self.remove(case_id)
        except (OSError, sqlite3.Error, StoreError) as e:
            log.error("case left torn", case=case_id, error=str(e))

    def expire(self) -> list[str]:
        """Let go unlocked cases past their TTL (their retention class's, else their
        priority's); their ids."""
        now = self.clock()
        gone = [case_id for case_id, opened, priority, ttl_s in self._db.execute(
            "SELECT id, opened, priority, ttl_s FROM cases WHERE state != ? AND locked = 0", (OPEN,)).fetchall()
                if now - opened > (ttl_s if ttl_s is not None else
                                   value.TTL_S.get(priority, value.TTL_S[value.NO_PRIORITY]))]
        for case_id in gone:
            self.remove(case_id)
        return gone

    # ---- inside ----

    def _make_room(self, need: int, case: Case) -> bool:
        """Let go sealed, unlocked cases worth less than `case` now, least first, until
        `need` more bytes fit the budget. Whether they do."""
        if self.used_bytes() + need <= self.budget:
            return True
        self.expire()
        now = self.clock()
        worth = case.value.score(now - case.opened)
        candidates = sorted(
            (value.Value(severity, similar, weight).score(now - opened), case_id) for case_id, opened, severity,
            similar, weight in self._db.execute("SELECT id, opened, severity, similar, weight FROM cases "
                                                "WHERE state = ? AND locked = 0", (SEALED,)).fetchall())
        for score, case_id in candidates:
            if self.used_bytes() + need <= self.budget:
                break
            if score >= worth:
                break
            log.info("case let go for room", case=case_id, score=score, for_case=case.id, score_of_new=worth)
            self.remove(case_id)
        return self.used_bytes() + need <= self.budget

    def _unref(self, db: sqlite3.Connection, case_id: str, sha: str) -> None:
        db.execute("DELETE FROM refs WHERE case_id = ? AND sha256 = ?", (case_id, sha))
        db.execute("UPDATE blobs SET refs = refs - 1 WHERE sha256 = ?", (sha,))
        if db.execute("DELETE FROM blobs WHERE sha256 = ? AND refs <= 0", (sha,)).rowcount:
            self._blob_path(sha).unlink(missing_ok=True)

    def _tear_left_open(self) -> None:
        """Cases an earlier run left open are torn; blob files no case holds (a crash
        between a write and its index entry) go."""
        with self._transaction() as db:
            torn = [case_id for (case_id,) in db.execute("SELECT id FROM cases WHERE state = ?", (OPEN,))]
            db.execute("UPDATE cases SET state = ? WHERE state = ?", (TORN, OPEN))
        for case_id in torn:
            log.error("case torn", case=case_id, why="left open by a sensor that stopped while writing it")
        known = {sha for (sha,) in self._db.execute("SELECT sha256 FROM blobs")}
        for path in (self.root / "blobs").glob("*/*"):
            if path.name not in known:
                path.unlink(missing_ok=True)

    def _state(self, case_id: str) -> str:
        row = self._db.execute("SELECT state FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            raise StoreError(f"no case {case_id!r} in {self.root}")
        return row[0]

    def _manifest_path(self, case_id: str) -> Path:
        return self.root / "cases" / f"{case_id}.msgpack"

    def _blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    @contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:  # sqlite rolls back by itself on some errors (a full disk)
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class Case:
    """A case being written: artifacts go to the store as they come; `seal` writes the
    manifest. Artifacts the budget has no room for are listed as missing."""

    RESERVE = 64 << 10  # bytes kept free for the manifest while artifacts are added

    def __init__(self, store: CaseStore, case_id: str, container: dict, triggers: list[Record], rule: str,
                 priority: str, worth: value.Value, opened: float):
        self.store, self.id, self.container, self.triggers = store, case_id, container, triggers
        self.rule, self.priority, self.value, self.opened = rule, priority, worth, opened
        self.artifacts: list[dict] = []
        self.missing_parts: list[dict] = []
        self.reserve = self.RESERVE
        self.capture: dict = {}  # how it was captured (sensor.forensics.capture)

    def add(self, kind: str, name: str | bytes, data: bytes, **details) -> bool:
        """An artifact (`kind`: memory, executable, file, events...); whether it was kept.
        One that cannot be written (a full disk) is listed as missing."""
        try:
            sha = self.store._put_blob(self, data)
        except (OSError, sqlite3.Error) as e:  # a full disk: OSError for a blob, sqlite3.Error for the index
            self.missing(f"{kind} {name!r}", f"cannot be written to the case store: {getattr(e, 'strerror', None) or e}")
            return False
        if sha is None:
            self.missing(f"{kind} {name!r}", "no room within the case store's budget")
            return False
        self.artifacts.append({"kind": kind, "name": name, "size": len(data), "sha256": sha, **details})
        return True

    def missing(self, what: str, why: str) -> None:
        self.missing_parts.append({"what": what, "why": why})

    def seal(self, **timings: float) -> dict:
        """The manifest, written; `timings` (seconds) are kept in it beside opened and
        sealed. Its `bytes` is 0 when the store had no room for the case at all."""
        manifest = {"manifest_version": MANIFEST_VERSION, "id": self.id, "container": self.container,
                    "triggers": self.triggers, "trigger": {"rule": self.rule, "priority": self.priority},
                    "artifacts": self.artifacts, "missing": self.missing_parts, "capture": self.capture,
                    "complete": not self.missing_parts,
                    "timings": {"opened": self.opened, "sealed": self.store.clock(), **timings},
                    "value": self.value.explain(0.0)}
        manifest["bytes"] = self.store._seal(self, manifest)
        return manifest


def safe_relative(name: str | bytes) -> Path:
    """A name from a container as a path that stays under the directory it is joined to:
    its parts without '..', '.', empty or NUL ones, non-UTF-8 bytes escaped."""
    text = name.decode(errors="backslashreplace") if isinstance(name, bytes) else str(name)
    parts = [p.replace("\0", "\\0") for p in text.split("/") if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path("_")


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _write_whole(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all, 0600."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

