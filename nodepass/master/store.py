"""
Durable master state in SQLite (master spec §11.6).

The master keeps its instances, its own values (API key digest, master ID,
master alias) and its webhooks (schema version 2) in C{<base>/nodepass.db}, a stdlib C{sqlite3} database in WAL
mode with C{synchronous=FULL}: every change runs in its own transaction and
is on disk when the call returns, so an acknowledged API change survives
C{kill -9}.

Two layers:

  - L{SyncStore} does the work, synchronously, on one connection.  It is
    easy to test and is also what an offline management command would use.
  - L{Store} is the facade the master uses from the reactor thread: every
    operation runs on B{one} dedicated worker thread (a
    L{twisted.python.threadpool.ThreadPool} of size 1), so the reactor never
    blocks on disk and operations are serialised in call order.  Each method
    returns a L{Deferred}.

At open, the database is checked with C{PRAGMA quick_check}.  A corrupt or
unreadable database is moved aside under a timestamped name (never deleted
or overwritten) and replaced by a copy of the backup (C{nodepass.db.backup},
written by L{SyncStore.periodicBackup}) if that one is sound; otherwise
L{StoreError} is raised and the master must refuse to start rather than mint
a new key over the data (spec §17 a7).

The plaintext API key never reaches this module: only its digest is stored
(L{keyDigest}).  Nothing here logs instance URLs, which carry tunnel keys, nor
webhook URLs and secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeVar

import attrs
from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from nodepass.errors import NodePassError
from nodepass.master.gob import GobError, GoInstance, decodeInstances

__all__ = [
    "BACKUP_SUFFIX",
    "DATABASE_NAME",
    "GOB_PATH",
    "PSEUDO_ID",
    "SCHEMA_VERSION",
    "MasterValues",
    "State",
    "Store",
    "StoreError",
    "StoredInstance",
    "StoredWebhook",
    "SyncStore",
    "Traffic",
    "defaultMeta",
    "keyDigest",
]

log = Logger()

#: File name of the database inside the state directory (spec §11.6).
DATABASE_NAME: Final = "nodepass.db"

#: Appended to the database path to name the periodic backup (spec §11.6).
BACKUP_SUFFIX: Final = ".backup"

#: The file the health check writes and removes in the state directory.
PROBE_NAME: Final = ".nodepass-health"

#: Where a Go master's state file sits, relative to the state directory (spec §11.1, §11.6).
GOB_PATH: Final = os.path.join("gob", "nodepass.gob")

#: The id of the API key pseudo-instance (spec §5, §6.1).  Its values live in
#: the master table, never in the instances table.
PSEUDO_ID: Final = "********"

#: The schema version this code writes (C{PRAGMA user_version}): 2 adds the webhooks.
SCHEMA_VERSION: Final = 2

_UINT64 = 1 << 64
_INT64_MAX = (1 << 63) - 1
_COUNTERS = ("tcprx", "tcptx", "udprx", "udptx")


class StoreError(NodePassError):
    """
    The master state cannot be opened, read or written.

    C{str()} is always one line and names the file concerned.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def keyDigest(key: str) -> str:
    """
    The at-rest form of an API key: the SHA-256 digest of its UTF-8 bytes,
    as 64 lowercase hexadecimal characters (spec §5, §17 a2).
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def defaultMeta() -> dict[str, Any]:
    """
    A fresh empty C{meta} object: C{{"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}}}.
    """
    return {"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}}


def _normaliseMeta(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    Copy C{value} into the exact C{meta} shape of spec §6.1: a peer object with
    three strings and a string-to-string tag map (nulls become C{""}/C{{}}).
    """
    if value is None:
        return defaultMeta()
    if not isinstance(value, Mapping):
        raise TypeError(f"meta must be a mapping, not {type(value).__name__}")
    peer = value.get("peer") or {}
    tags = value.get("tags") or {}
    if not isinstance(peer, Mapping) or not isinstance(tags, Mapping):
        raise TypeError("meta.peer and meta.tags must be mappings")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("meta.tags must map strings to strings")
    normalised: dict[str, Any] = {"peer": {}, "tags": dict(tags)}
    for name in ("sid", "type", "alias"):
        item = peer.get(name)
        if item is None:
            item = ""
        if not isinstance(item, str):
            raise TypeError(f"meta.peer.{name} must be a string")
        normalised["peer"][name] = item
    return normalised


def _checkCounter(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _UINT64:
        raise ValueError(f"{attribute.name} must be an unsigned 64-bit integer, not {value!r}")


@frozen
class Traffic:
    """
    The four byte counters of an instance (spec §6.1, §9.4), each a uint64.
    """

    tcprx: int = field(default=0, validator=_checkCounter)
    tcptx: int = field(default=0, validator=_checkCounter)
    udprx: int = field(default=0, validator=_checkCounter)
    udptx: int = field(default=0, validator=_checkCounter)


@frozen
class StoredInstance:
    """
    The persisted part of one instance (spec §6.1, §11.6).

    Runtime values (status, mode, ping, pool, tcps, udps, the child process)
    are not stored: every instance is C{stopped} after a master restart
    (spec §11.4).

    @ivar id: 8 lowercase hex characters; never L{PSEUDO_ID}.
    @ivar meta: C{{"peer": {"sid", "type", "alias"}, "tags": {str: str}}};
        normalised and copied on construction.
    @ivar traffic: the exposed cumulative totals (spec §9.4 C{total_x}).
    @ivar base: the totals when the current child started (C{base_x}).
    @ivar offset: the child's raw counters at the last reset (C{off_x}).
        C{base} and C{offset} only matter within one child lifetime; they are
        kept so that a Go state file's values can be carried over faithfully.
    """

    id: str
    alias: str = ""
    type: str = ""
    url: str = ""
    config: str = ""
    restart: bool = True
    meta: dict[str, Any] = field(factory=defaultMeta, converter=_normaliseMeta)
    traffic: Traffic = Traffic()
    base: Traffic = Traffic()
    offset: Traffic = Traffic()

    def __repr__(self) -> str:
        # The URL and config carry the tunnel key: keep them out of reprs
        # that could end up in a log line or a test failure report.
        return f"StoredInstance(id={self.id!r}, type={self.type!r}, alias={self.alias!r})"


@frozen
class MasterValues:
    """
    The master's own persisted values (spec §5, §11.6, §12).

    @ivar keyDigest: L{keyDigest} of the API key; C{""} before the first key.
    @ivar masterID: 16 lowercase hex characters (C{/info.mid}); C{""} if unset.
    @ivar alias: the master alias (C{/info.alias}), at most 256 bytes.
    """

    keyDigest: str = ""
    masterID: str = ""
    alias: str = ""

    def __repr__(self) -> str:
        return f"MasterValues(keyDigest=<{len(self.keyDigest)} chars>, masterID={self.masterID!r}, alias={self.alias!r})"


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@frozen
class StoredWebhook:
    """
    One webhook subscription (the C{P/webhooks} API).

    @ivar id: 8 lowercase hex characters.
    @ivar url: the C{http} or C{https} URL the events are posted to.
    @ivar events: the event kinds it receives, in the API's canonical order.
    @ivar secret: the HMAC key of the signature, as given (C{""}: unsigned).  Write-only:
        never in an answer, an event, a log line or a repr.
    @ivar created: when it was created, POSIX seconds.
    """

    id: str
    url: str
    events: tuple[str, ...] = field(converter=_strings)
    secret: str = field(default="", repr=False)
    created: float = 0.0

    def __repr__(self) -> str:
        # The URL may carry credentials too: only the id and the kinds.
        return f"StoredWebhook(id={self.id!r}, events={self.events!r})"


@frozen
class State:
    """
    Everything L{SyncStore.load} returns: the master values and the
    instances in creation order.
    """

    master: MasterValues
    instances: tuple[StoredInstance, ...]


_SCHEMA_V1 = """
CREATE TABLE master (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    key_digest TEXT NOT NULL DEFAULT '',
    master_id TEXT NOT NULL DEFAULT '',
    alias TEXT NOT NULL DEFAULT ''
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    alias TEXT NOT NULL,
    type TEXT NOT NULL,
    url TEXT NOT NULL,
    config TEXT NOT NULL,
    restart INTEGER NOT NULL,
    meta TEXT NOT NULL,
    tcprx INTEGER NOT NULL DEFAULT 0,
    tcptx INTEGER NOT NULL DEFAULT 0,
    udprx INTEGER NOT NULL DEFAULT 0,
    udptx INTEGER NOT NULL DEFAULT 0,
    tcprx_base INTEGER NOT NULL DEFAULT 0,
    tcptx_base INTEGER NOT NULL DEFAULT 0,
    udprx_base INTEGER NOT NULL DEFAULT 0,
    udptx_base INTEGER NOT NULL DEFAULT 0,
    tcprx_reset INTEGER NOT NULL DEFAULT 0,
    tcptx_reset INTEGER NOT NULL DEFAULT 0,
    udprx_reset INTEGER NOT NULL DEFAULT 0,
    udptx_reset INTEGER NOT NULL DEFAULT 0
);
"""

_SCHEMA_V2 = """
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created REAL NOT NULL
);
"""

#: Forward migrations: C{_MIGRATIONS[n]} takes a database from version C{n}
#: to C{n + 1}.  Version 0 is a brand-new, empty database.
_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2}

_INSTANCE_COLUMNS = (
    "id, alias, type, url, config, restart, meta, "
    + ", ".join(_COUNTERS)
    + ", "
    + ", ".join(f"{c}_base" for c in _COUNTERS)
    + ", "
    + ", ".join(f"{c}_reset" for c in _COUNTERS)
)


def _toSigned(value: int) -> int:
    # SQLite integers are signed 64-bit: store a uint64 as its two's complement.
    return value - _UINT64 if value > _INT64_MAX else value


def _toUnsigned(value: int) -> int:
    return value + _UINT64 if value < 0 else value


def _trafficColumns(traffic: Traffic) -> tuple[int, ...]:
    return tuple(_toSigned(getattr(traffic, c)) for c in _COUNTERS)


def _trafficFrom(values: tuple[int, ...]) -> Traffic:
    return Traffic(*(_toUnsigned(v) for v in values))


def _fsyncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsyncFile(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkFile(path: str) -> str | None:
    """
    Open the database at C{path} and run C{PRAGMA quick_check}.

    @return: C{None} if the file is a sound SQLite database, else a one-line
        reason.
    """
    try:
        # Read-write, so that a hot journal or a WAL left by a crash is
        # recovered exactly as a normal open would; nothing else is written.
        connection = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as e:
        return _oneLine(str(e))
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
        # Make sure the header and schema really are readable.
        connection.execute("PRAGMA user_version").fetchone()
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        return _oneLine(str(e))
    finally:
        connection.close()
    if rows != [("ok",)]:
        return _oneLine("; ".join(str(row[0]) for row in rows))
    return None


def _oneLine(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _instanceRow(record: StoredInstance) -> tuple[Any, ...]:
    """
    The C{instances} row of C{record}, in L{_INSTANCE_COLUMNS} order.
    """
    return (
        record.id,
        record.alias,
        record.type,
        record.url,
        record.config,
        int(record.restart),
        json.dumps(record.meta, ensure_ascii=False, separators=(",", ":")),
        *_trafficColumns(record.traffic),
        *_trafficColumns(record.base),
        *_trafficColumns(record.offset),
    )


def _fromGob(
    records: Mapping[str, GoInstance],
) -> tuple[MasterValues | None, list[StoredInstance]]:
    """
    Split a decoded Go state file into the master values (from the
    pseudo-instance, C{None} if it is missing) and the instances, in id order.

    @raise ValueError: a record cannot be stored (an empty id).
    """
    master: MasterValues | None = None
    instances: list[StoredInstance] = []
    for id in sorted(records):
        record = records[id]
        if id == PSEUDO_ID:
            master = MasterValues(
                keyDigest=keyDigest(record.url) if record.url else "",
                masterID=record.config,
                alias=record.alias,
            )
            continue
        if not id:
            raise ValueError("an instance with an empty id")
        instances.append(
            StoredInstance(
                id=id,
                alias=record.alias,
                type=record.type,
                url=record.url,
                config=record.config,
                restart=record.restart,
                meta={
                    "peer": {
                        "sid": record.peer.sid,
                        "type": record.peer.type,
                        "alias": record.peer.alias,
                    },
                    "tags": dict(record.tags or {}),
                },
                traffic=Traffic(*record.traffic),
                base=Traffic(*record.base),
                offset=Traffic(*record.reset),
            )
        )
    return master, instances


class SyncStore:
    """
    The synchronous store: one SQLite connection, used from one thread at a
    time (the facade guarantees that).

    @ivar directory: the state directory.
    @ivar path: the database file, C{<directory>/nodepass.db}.
    @ivar backupPath: the periodic backup, C{<path>.backup}.
    @ivar gobPath: a Go master's state file that would be imported once when
        no database exists yet.
    """

    def __init__(
        self,
        directory: str,
        *,
        gobPath: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.path = os.path.join(directory, DATABASE_NAME)
        self.backupPath = self.path + BACKUP_SUFFIX
        self.gobPath = gobPath if gobPath is not None else os.path.join(directory, GOB_PATH)
        self._now = now
        self._connection: sqlite3.Connection | None = None

    # -- opening -----------------------------------------------------------

    def open(self) -> None:
        """
        Open (creating, restoring or migrating as needed) the database.

        Order of events:
          1. Create the state directory (0700) if needed.
          2. No database file but a backup: restore the backup (a deleted
             database must not turn into a fresh key over the backup).
             No database and no backup but a Go state file: import it.
          3. A database that fails C{PRAGMA quick_check} or cannot be opened
             is moved aside as C{nodepass.db.corrupt-<UTC timestamp>} (with
             its C{-wal}/C{-shm} files) and the backup is copied in its
             place, if the backup is sound.  An empty (0-byte) database is
             treated the same way when a backup exists.
          4. Set WAL mode and C{synchronous=FULL}; migrate the schema forward.

        @raise StoreError: the database is unusable and no sound backup
            exists, the schema is newer than this code, or the Go state
            file cannot be imported.
        """
        if self._connection is not None:
            raise StoreError(f"state database already open: {self.path}")
        try:
            self._open()
        except (OSError, sqlite3.Error) as e:
            # A directory that cannot be created or written, a file that cannot be read:
            # one clear line, never a traceback.
            reason = getattr(e, "strerror", None) or str(e)
            raise StoreError(f"cannot use the state in {self.directory}: {reason}") from e

    def _open(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if not os.path.exists(self.path):
            if os.path.exists(self.backupPath):
                problem = _checkFile(self.backupPath)
                if problem is not None:
                    raise StoreError(
                        f"state database {self.path} is missing and its backup "
                        f"{self.backupPath} is unusable ({problem})"
                    )
                log.warn(
                    "State database {path} is missing: restoring it from {backup}",
                    path=self.path,
                    backup=self.backupPath,
                )
                self._restoreBackup()
            elif os.path.exists(self.gobPath):
                self.importGob(self.gobPath)
        else:
            problem = _checkFile(self.path)
            if problem is None and self._isBlank() and os.path.exists(self.backupPath):
                # An empty file passes the check, but starting empty here
                # would mint a new key and soon overwrite the good backup.
                problem = "the file is empty"
            if problem is not None:
                self._recover(problem)
        self._connect()

    def _isBlank(self) -> bool:
        """
        Whether the database file holds no data at all (size 0, no WAL).
        """
        sizes = [os.path.getsize(self.path)]
        if os.path.exists(self.path + "-wal"):
            sizes.append(os.path.getsize(self.path + "-wal"))
        return not any(sizes)

    def _recover(self, problem: str) -> None:
        """
        Replace the corrupt database by the backup, keeping the corrupt files.
        """
        if not os.path.exists(self.backupPath):
            raise StoreError(
                f"state database {self.path} is corrupt ({problem}) and there is no backup "
                f"({self.backupPath}); refusing to start"
            )
        backupProblem = _checkFile(self.backupPath)
        if backupProblem is not None:
            raise StoreError(
                f"state database {self.path} is corrupt ({problem}) and its backup "
                f"{self.backupPath} is unusable too ({backupProblem}); refusing to start"
            )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._now()))
        aside = f"{self.path}.corrupt-{stamp}"
        counter = 1
        while os.path.exists(aside):
            aside = f"{self.path}.corrupt-{stamp}-{counter}"
            counter += 1
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.rename(self.path + suffix, aside + suffix)
        _fsyncDirectory(self.directory)
        log.error(
            "State database {path} is corrupt ({problem}): kept as {aside}, "
            "restoring the backup {backup}",
            path=self.path,
            problem=problem,
            aside=aside,
            backup=self.backupPath,
        )
        self._restoreBackup()

    def _restoreBackup(self) -> None:
        """
        Copy the backup to the (absent) database path atomically.
        """
        source = sqlite3.connect(self.backupPath, isolation_level=None)
        try:
            self._backupTo(source, self.path)
        finally:
            source.close()
        problem = _checkFile(self.path)
        if problem is not None:
            raise StoreError(
                f"state database {self.path} restored from backup is unusable ({problem})"
            )

    def _connect(self) -> None:
        if not os.path.exists(self.path):
            # An empty file is a valid empty database; creating it ourselves
            # gives it mode 0600, and SQLite gives -wal/-shm the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open state database {self.path}: {e}") from e
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"cannot put state database {self.path} in WAL mode ({mode})")
            connection.execute("PRAGMA synchronous=FULL")
            self._migrate(connection)
        except sqlite3.Error as e:
            connection.close()
            raise StoreError(f"cannot use state database {self.path}: {e}") from e
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema version {version}, "
                f"newer than this NodePass supports ({SCHEMA_VERSION})"
            )
        while version < SCHEMA_VERSION:
            with self._transaction(connection):
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                version += 1
                # PRAGMA does not take parameters; version is our own integer.
                connection.execute(f"PRAGMA user_version = {version:d}")

    @staticmethod
    @contextlib.contextmanager
    def _transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """
        One write transaction; a failure (a full disk, a read-only file) rolls it back
        and becomes a L{StoreError} naming the cause.
        """
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.Error as e:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise StoreError(f"the state cannot be saved: {e}") from e

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"state database is not open: {self.path}")
        return self._connection

    def probe(self) -> None:
        """
        Check that the state directory takes a write now: a small file is written, synced
        and removed there (a read-only or full file system, or a directory that is gone,
        fails it even while the open database still answers reads).

        @raise StoreError: the write failed.
        """
        path = os.path.join(self.directory, PROBE_NAME)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as e:
            raise StoreError(
                f"the state directory {self.directory} is not writable: {e.strerror}"
            ) from e

    def close(self) -> None:
        """
        Close the connection (a WAL checkpoint happens on the last close).
        Closing a closed store does nothing.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # -- the Go state file -------------------------------------------------

    def importGob(self, path: str) -> None:
        """
        Import a Go master's state file once, when no database exists yet
        (spec §11.1, §11.6).  The file is only read, never modified.

        The file holds one value encoded with Go's C{encoding/gob}, a
        C{map[string]*Instance} keyed by instance id and including the
        pseudo-instance L{PSEUDO_ID}; L{nodepass.master.gob} decodes it,
        matching struct fields by name (spec §11.1 lists them).  Mapping:

          - the pseudo-instance's C{URL} is the plaintext API key: only its
            L{keyDigest} is stored (an empty key stores C{""}, so a new key
            is minted); its C{Config} is the master ID and its C{Alias} the
            master alias;
          - every other record becomes a L{StoredInstance} with the map key
            as id, its C{Alias}, C{Type}, C{URL}, C{Config}, C{Restart} and
            C{Meta} (a nil tag map becomes C{{}}); C{TCPRX}... are the
            traffic totals, C{TCPRXBase}... the C{base} and
            C{TCPRXReset}... the C{offset} bookkeeping (see
            L{StoredInstance}).  Runtime values (status, mode, ping, pool,
            tcps, udps) are not stored.  Instances are stored in id order,
            since a Go map has none.

        The database is built in a temporary file in the state directory,
        schema and data each in one transaction, then fsynced and renamed
        to L{path}: if anything fails, no database appears that would later
        shadow the Go file and start the master empty.

        @param path: the Go state file.
        @raise StoreError: the file cannot be read or decoded, or holds a
            record that cannot be stored; the master must refuse to start
            rather than mint a new API key over the operator's instances
            (spec §17 a7).  Moving the file away lets it start empty.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StoreError(
                f"Go state file {path} cannot be read ({_oneLine(e.strerror or str(e))}); "
                "refusing to start"
            ) from e
        try:
            master, records = _fromGob(decodeInstances(data))
        except (GobError, ValueError, TypeError) as e:
            raise StoreError(
                f"Go state file {path} cannot be imported ({_oneLine(str(e))}); refusing to "
                "start (move the file away to start with empty state)"
            ) from e
        self._writeImport(path, master, records)
        if master is None:
            log.warn(
                "Go state file {path} has no API key record: a new key will be created",
                path=path,
            )
        log.info(
            "Imported {count} instances from the Go state file {path}",
            count=len(records),
            path=path,
        )

    def _writeImport(
        self, source: str, master: MasterValues | None, records: list[StoredInstance]
    ) -> None:
        """
        Write a new database holding C{master} and C{records} at L{path},
        atomically (temporary file, fsync, rename).
        """
        fd, temporary = tempfile.mkstemp(
            prefix=os.path.basename(self.path) + ".import-", suffix=".tmp", dir=self.directory
        )
        os.close(fd)
        try:
            connection = sqlite3.connect(temporary, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=DELETE")
                connection.execute("PRAGMA synchronous=FULL")
                self._migrate(connection)
                with self._transaction(connection):
                    if master is not None:
                        connection.execute(
                            "INSERT INTO master (singleton, key_digest, master_id, alias) "
                            "VALUES (1, ?, ?, ?)",
                            (master.keyDigest, master.masterID, master.alias),
                        )
                    connection.executemany(
                        f"INSERT INTO instances ({_INSTANCE_COLUMNS}) "
                        f"VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS.split(', ')))})",
                        [_instanceRow(record) for record in records],
                    )
            finally:
                connection.close()
            _fsyncFile(temporary)
            if os.path.exists(self.path):
                # Somebody created the database meanwhile: never replace it.
                raise StoreError(
                    f"state database {self.path} appeared while importing {source}; "
                    "refusing to overwrite it"
                )
            os.replace(temporary, self.path)
            _fsyncDirectory(self.directory)
        except sqlite3.Error as e:
            raise StoreError(
                f"cannot write state database {self.path} from the Go state file {source}: {e}"
            ) from e
        finally:
            for leftover in (temporary, temporary + "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    # -- reading -----------------------------------------------------------

    def load(self) -> State:
        """
        Read the master values and every instance, in creation order.
        """
        db = self._db()
        row = db.execute("SELECT key_digest, master_id, alias FROM master").fetchone()
        master = MasterValues(*row) if row is not None else MasterValues()
        instances = tuple(
            self._instanceFrom(r)
            for r in db.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY rowid")
        )
        return State(master=master, instances=instances)

    def _instanceFrom(self, row: tuple[Any, ...]) -> StoredInstance:
        try:
            meta = json.loads(row[6])
        except ValueError as e:
            raise StoreError(f"unreadable meta for instance {row[0]!r} in {self.path}") from e
        return StoredInstance(
            id=row[0],
            alias=row[1],
            type=row[2],
            url=row[3],
            config=row[4],
            restart=bool(row[5]),
            meta=meta,
            traffic=_trafficFrom(row[7:11]),
            base=_trafficFrom(row[11:15]),
            offset=_trafficFrom(row[15:19]),
        )

    # -- writing -----------------------------------------------------------

    def put(self, record: StoredInstance) -> None:
        """
        Insert C{record}, or replace the stored instance with the same id
        (keeping its place in the creation order).  Committed on return.
        """
        if not record.id or record.id == PSEUDO_ID:
            raise ValueError(f"not a storable instance id: {record.id!r}")
        values = _instanceRow(record)
        columns = _INSTANCE_COLUMNS.split(", ")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        db = self._db()
        with self._transaction(db):
            db.execute(
                f"INSERT INTO instances ({_INSTANCE_COLUMNS}) "
                f"VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT (id) DO UPDATE SET {updates}",
                values,
            )

    def delete(self, id: str) -> bool:
        """
        Remove the instance C{id}.

        @return: whether it existed.
        """
        db = self._db()
        with self._transaction(db):
            cursor = db.execute("DELETE FROM instances WHERE id = ?", (id,))
        return cursor.rowcount > 0

    def updateTraffic(self, id: str, totals: Traffic) -> bool:
        """
        Store new traffic totals for the instance C{id}.

        @return: whether the instance exists (a deleted one is ignored).
        """
        return self.updateTrafficMany({id: totals}) == 1

    def updateTrafficMany(self, totals: Mapping[str, Traffic]) -> int:
        """
        Store new traffic totals for several instances in one transaction
        (the master's 60-second and shutdown flushes, spec §11.6).

        @return: how many of the instances exist.
        """
        db = self._db()
        updated = 0
        with self._transaction(db):
            for id, traffic in totals.items():
                cursor = db.execute(
                    "UPDATE instances SET tcprx = ?, tcptx = ?, udprx = ?, udptx = ? WHERE id = ?",
                    (*_trafficColumns(traffic), id),
                )
                updated += cursor.rowcount
        return updated

    def setMaster(
        self,
        *,
        keyDigest: str | None = None,
        masterID: str | None = None,
        alias: str | None = None,
    ) -> MasterValues:
        """
        Change some of the master values; C{None} leaves a value unchanged.

        @param keyDigest: the L{keyDigest} of the API key, never the key.
        @return: the master values now stored.
        """
        db = self._db()
        with self._transaction(db):
            db.execute("INSERT OR IGNORE INTO master (singleton) VALUES (1)")
            for column, value in (
                ("key_digest", keyDigest),
                ("master_id", masterID),
                ("alias", alias),
            ):
                if value is not None:
                    db.execute(f"UPDATE master SET {column} = ? WHERE singleton = 1", (value,))
            row = db.execute("SELECT key_digest, master_id, alias FROM master").fetchone()
        return MasterValues(*row)

    # -- webhooks ----------------------------------------------------------

    def webhooks(self) -> tuple[StoredWebhook, ...]:
        """
        Every webhook, in creation order.
        """
        rows = self._db().execute(
            "SELECT id, url, events, secret, created FROM webhooks ORDER BY rowid"
        )
        return tuple(self._webhookFrom(row) for row in rows)

    def _webhookFrom(self, row: tuple[Any, ...]) -> StoredWebhook:
        try:
            events = json.loads(row[2])
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ValueError("not a list of strings")
        except ValueError as e:
            raise StoreError(f"unreadable events for webhook {row[0]!r} in {self.path}") from e
        return StoredWebhook(
            id=row[0], url=row[1], events=tuple(events), secret=row[3], created=float(row[4])
        )

    def putWebhook(self, hook: StoredWebhook) -> None:
        """
        Insert C{hook}, or replace the stored webhook with the same id (keeping its place
        in the creation order).  Committed on return.
        """
        if not hook.id:
            raise ValueError("a webhook needs an id")
        values = (
            hook.id,
            hook.url,
            json.dumps(list(hook.events), separators=(",", ":")),
            hook.secret,
            float(hook.created),
        )
        db = self._db()
        with self._transaction(db):
            db.execute(
                "INSERT INTO webhooks (id, url, events, secret, created) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "url = excluded.url, events = excluded.events, secret = excluded.secret, "
                "created = excluded.created",
                values,
            )

    def deleteWebhook(self, id: str) -> bool:
        """
        Remove the webhook C{id}.

        @return: whether it existed.
        """
        db = self._db()
        with self._transaction(db):
            cursor = db.execute("DELETE FROM webhooks WHERE id = ?", (id,))
        return cursor.rowcount > 0

    # -- backups -----------------------------------------------------------

    def backup(self, path: str) -> None:
        """
        Copy the database to C{path} with the SQLite online backup API.

        Atomic: the copy is written to a temporary file in the same
        directory, switched to a rollback journal (so that the copy is one
        self-contained file), fsynced and renamed over C{path}.
        """
        self._backupTo(self._db(), path)

    def periodicBackup(self) -> str:
        """
        Write the periodic backup, C{<base>/nodepass.db.backup} (spec §11.3,
        §11.6); the master calls this every C{NP_RELOAD_INTERVAL}.

        @return: the backup path.
        """
        self.backup(self.backupPath)
        return self.backupPath

    def _backupTo(self, source: sqlite3.Connection, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        fd, temporary = tempfile.mkstemp(
            prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
        os.close(fd)
        try:
            target = sqlite3.connect(temporary, isolation_level=None)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
            _fsyncFile(temporary)
            os.replace(temporary, path)
            _fsyncDirectory(directory)
        except sqlite3.Error as e:
            raise StoreError(f"cannot write state backup {path}: {e}") from e
        finally:
            for leftover in (temporary, temporary + "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


_T = TypeVar("_T")


class Store:
    """
    The asynchronous facade over L{SyncStore}: every operation runs, in call
    order, on one dedicated worker thread, and returns a L{Deferred}.

    Construct, then L{open} (which starts the worker thread) and finally
    L{close} (which stops it).  If the reactor shuts down while the store is
    still open, the worker thread is stopped after the shutdown so that it
    cannot keep the process alive.
    """

    def __init__(
        self,
        directory: str,
        reactor: Any,
        *,
        gobPath: str | None = None,
        core: SyncStore | None = None,
    ) -> None:
        """
        @param directory: the state directory; the caller picks it
            (C{NP_STATE_DIR} or the current directory, spec §11.6).
        @param reactor: provides
            L{twisted.internet.interfaces.IReactorCore} and
            L{twisted.internet.interfaces.IReactorFromThreads}.
        @param core: the synchronous store to drive (tests); by default a
            L{SyncStore} on C{directory}.
        """
        self.core = core if core is not None else SyncStore(directory, gobPath=gobPath)
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._trigger: Any = None

    @property
    def path(self) -> str:
        return self.core.path

    def _run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> Deferred[_T]:
        if self._pool is None:
            raise StoreError(f"state database is not open: {self.core.path}")
        return deferToThreadPool(self._reactor, self._pool, function, *args, **kwargs)

    def open(self) -> Deferred[None]:
        """
        Start the worker thread and open the database there.

        Fails with L{StoreError} (and stops the thread) if it cannot be opened.
        """
        self._checkClosed()
        self._startPool()
        d = self._run(self.core.open)

        def failed(reason: Any) -> Any:
            self._stopPool()
            return reason

        d.addErrback(failed)
        return d

    def openNow(self) -> None:
        """
        Open the database in the calling thread, then start the worker thread.

        For start-up before the reactor runs, where blocking is harmless and a failure must
        stop the program at once (one line, exit status 1) rather than after the API is up.

        @raise StoreError: the database cannot be opened (nothing is started then).
        """
        self._checkClosed()
        self.core.open()
        self._startPool()

    def closeNow(self) -> None:
        """
        Close the database in the calling thread and stop the worker thread (start-up failed
        after L{openNow}, nothing was queued).
        """
        self._stopPool()
        self.core.close()

    def _checkClosed(self) -> None:
        if self._pool is not None:
            raise StoreError(f"state database already open: {self.core.path}")

    def _startPool(self) -> None:
        """
        Start the worker thread, stopped again after the reactor shuts down.
        """
        pool = ThreadPool(minthreads=1, maxthreads=1, name="nodepass-store")
        pool.start()
        self._pool = pool
        self._trigger = self._reactor.addSystemEventTrigger("after", "shutdown", self._stopPool)

    def _stopPool(self) -> None:
        pool, self._pool = self._pool, None
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            with contextlib.suppress(ValueError, KeyError):
                self._reactor.removeSystemEventTrigger(trigger)
        if pool is not None:
            # The queue is empty by now (or the reactor is gone): the join is short.
            pool.stop()

    def close(self) -> Deferred[None]:
        """
        Close the database after every operation already queued, then stop
        the worker thread.  Closing a closed store succeeds at once.
        """
        if self._pool is None:
            return succeed(None)
        d = self._run(self.core.close)

        def stop(result: Any) -> Any:
            self._stopPool()
            return result

        d.addBoth(stop)
        return d

    def load(self) -> Deferred[State]:
        """
        See L{SyncStore.load}.
        """
        return self._run(self.core.load)

    def put(self, record: StoredInstance) -> Deferred[None]:
        """
        See L{SyncStore.put}.
        """
        return self._run(self.core.put, record)

    def delete(self, id: str) -> Deferred[bool]:
        """
        See L{SyncStore.delete}.
        """
        return self._run(self.core.delete, id)

    def updateTraffic(self, id: str, totals: Traffic) -> Deferred[bool]:
        """
        See L{SyncStore.updateTraffic}.
        """
        return self._run(self.core.updateTraffic, id, totals)

    def updateTrafficMany(self, totals: Mapping[str, Traffic]) -> Deferred[int]:
        """
        See L{SyncStore.updateTrafficMany}.  C{totals} is copied first.
        """
        return self._run(self.core.updateTrafficMany, dict(totals))

    def setMaster(
        self,
        *,
        keyDigest: str | None = None,
        masterID: str | None = None,
        alias: str | None = None,
    ) -> Deferred[MasterValues]:
        """
        See L{SyncStore.setMaster}.
        """
        return self._run(self.core.setMaster, keyDigest=keyDigest, masterID=masterID, alias=alias)

    def webhooks(self) -> Deferred[tuple[StoredWebhook, ...]]:
        """
        See L{SyncStore.webhooks}.
        """
        return self._run(self.core.webhooks)

    def putWebhook(self, hook: StoredWebhook) -> Deferred[None]:
        """
        See L{SyncStore.putWebhook}.
        """
        return self._run(self.core.putWebhook, hook)

    def deleteWebhook(self, id: str) -> Deferred[bool]:
        """
        See L{SyncStore.deleteWebhook}.
        """
        return self._run(self.core.deleteWebhook, id)

    def probe(self) -> Deferred[None]:
        return self._run(self.core.probe)

    def backup(self, path: str) -> Deferred[None]:
        """
        See L{SyncStore.backup}.
        """
        return self._run(self.core.backup, path)

    def periodicBackup(self) -> Deferred[str]:
        """
        See L{SyncStore.periodicBackup}.
        """
        return self._run(self.core.periodicBackup)
