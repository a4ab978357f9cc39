"""
Tests for L{nodepass.master.store}: the SQLite master state (spec §11.6).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nodepass.master.store import (
    PROBE_NAME,
    PSEUDO_ID,
    SCHEMA_VERSION,
    MasterValues,
    Store,
    StoredInstance,
    StoredWebhook,
    StoreError,
    SyncStore,
    Traffic,
    defaultMeta,
    keyDigest,
)

KEY = "0123456789abcdef0123456789abcdef"


def _directory(case: SynchronousTestCase) -> str:
    """
    A state directory path (not created) inside a fresh temporary directory
    that is removed after the test.
    """
    parent = tempfile.mkdtemp(prefix="nodepass-store-")
    case.addCleanup(shutil.rmtree, parent, True)
    return os.path.join(parent, "state")


def _record(id: str = "a1b2c3d4", **kwargs: Any) -> StoredInstance:
    values: dict[str, Any] = {
        "alias": "web",
        "type": "server",
        "url": "server://secret@:10101/127.0.0.1:8080",
        "config": "server://secret@:10101/127.0.0.1:8080?log=info",
        "restart": True,
        "meta": {"peer": {"sid": "s1", "type": "1", "alias": "peer"}, "tags": {"env": "prod"}},
        "traffic": Traffic(1, 2, 3, 4),
    }
    values.update(kwargs)
    return StoredInstance(id=id, **values)


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = _directory(self)

    def openStore(self) -> SyncStore:
        store = SyncStore(self.directory)
        store.open()
        self.addCleanup(store.close)
        return store

    def fill(self, count: int = 200) -> SyncStore:
        """
        A closed store with C{count} instances, master values and a backup.
        """
        store = SyncStore(self.directory)
        store.open()
        for i in range(count):
            store.put(_record(f"{i:08x}", alias=f"instance {i}" * 4))
        store.setMaster(keyDigest=keyDigest(KEY), masterID="0011223344556677", alias="m")
        store.periodicBackup()
        store.close()
        return store


class RecordTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        record = StoredInstance(id="a1b2c3d4")
        self.assertEqual(record.meta, defaultMeta())
        self.assertTrue(record.restart)
        self.assertEqual(record.traffic, Traffic())

    def test_metaNormalised(self) -> None:
        """
        Null peer fields become C{""}, null tags C{{}}, and the record owns a copy.
        """
        tags = {"a": "b"}
        record = StoredInstance(id="x", meta={"peer": {"sid": None, "type": "2"}, "tags": tags})
        self.assertEqual(record.meta, {"peer": {"sid": "", "type": "2", "alias": ""}, "tags": tags})
        tags["c"] = "d"
        self.assertEqual(record.meta["tags"], {"a": "b"})
        self.assertEqual(StoredInstance(id="x", meta={"tags": None}).meta, defaultMeta())

    def test_metaRejected(self) -> None:
        self.assertRaises(TypeError, StoredInstance, id="x", meta={"tags": {"a": 1}})
        self.assertRaises(TypeError, StoredInstance, id="x", meta={"peer": {"sid": 3}})

    def test_counterRange(self) -> None:
        Traffic(tcprx=2**64 - 1)
        self.assertRaises(ValueError, Traffic, tcprx=2**64)
        self.assertRaises(ValueError, Traffic, udptx=-1)

    def test_reprHidesSecrets(self) -> None:
        self.assertNotIn("secret", repr(_record()))
        self.assertNotIn(keyDigest(KEY), repr(MasterValues(keyDigest=keyDigest(KEY))))

    def test_keyDigest(self) -> None:
        self.assertEqual(
            keyDigest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )


class SyncStoreTests(_Base):
    def test_probe(self) -> None:
        """
        The health probe writes and removes a file in the state directory; a directory that
        cannot take a new file fails it with L{StoreError}, and the database still answers.
        """
        store = self.openStore()
        before = sorted(os.listdir(self.directory))
        store.probe()
        self.assertEqual(sorted(os.listdir(self.directory)), before)
        # A directory (not a file) where the probe file goes: the create fails, even as root.
        os.mkdir(os.path.join(self.directory, PROBE_NAME))
        with self.assertRaises(StoreError) as caught:
            store.probe()
        self.assertIn("not writable", str(caught.exception))
        self.assertEqual(store.load().instances, ())
        os.rmdir(os.path.join(self.directory, PROBE_NAME))
        store.probe()

    def test_roundTrip(self) -> None:
        """
        Records and master values survive close and open, in creation order.
        """
        store = SyncStore(self.directory)
        store.open()
        first = _record("00000002", traffic=Traffic(2**64 - 1, 0, 5, 2**63))
        second = _record("00000001", restart=False, meta=None, base=Traffic(9), offset=Traffic(8))
        store.put(first)
        store.put(second)
        stored = store.setMaster(keyDigest=keyDigest(KEY), masterID="0011223344556677")
        self.assertEqual(stored, MasterValues(keyDigest(KEY), "0011223344556677", ""))
        store.setMaster(alias="my master")
        store.close()

        state = self.openStore().load()
        self.assertEqual(state.instances, (first, second))
        self.assertEqual(
            state.master, MasterValues(keyDigest(KEY), "0011223344556677", "my master")
        )

    def test_emptyLoad(self) -> None:
        state = self.openStore().load()
        self.assertEqual(state.instances, ())
        self.assertEqual(state.master, MasterValues())

    def test_replaceKeepsOrder(self) -> None:
        store = self.openStore()
        store.put(_record("00000001"))
        store.put(_record("00000002"))
        changed = _record("00000001", alias="renamed", meta={"tags": {}})
        store.put(changed)
        self.assertEqual([r.id for r in store.load().instances], ["00000001", "00000002"])
        self.assertEqual(store.load().instances[0], changed)

    def test_durable(self) -> None:
        """
        A put is visible to an independent connection while the store is
        still open (committed, not buffered).
        """
        store = self.openStore()
        store.put(_record())
        store.setMaster(alias="m")
        other = sqlite3.connect(store.path)
        self.addCleanup(other.close)
        self.assertEqual(
            other.execute("SELECT id, alias FROM instances").fetchall(), [("a1b2c3d4", "web")]
        )
        self.assertEqual(other.execute("SELECT alias FROM master").fetchall(), [("m",)])

    def test_walAndSynchronous(self) -> None:
        store = self.openStore()
        other = sqlite3.connect(store.path)
        self.addCleanup(other.close)
        self.assertEqual(other.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        assert store._connection is not None
        # 2 == FULL
        self.assertEqual(store._connection.execute("PRAGMA synchronous").fetchone()[0], 2)
        self.assertEqual(other.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_fileMode(self) -> None:
        store = self.openStore()
        self.assertEqual(stat.S_IMODE(os.stat(store.path).st_mode), 0o600)

    def test_delete(self) -> None:
        store = self.openStore()
        store.put(_record("00000001"))
        store.put(_record("00000002"))
        self.assertTrue(store.delete("00000001"))
        self.assertFalse(store.delete("00000001"))
        store.close()
        self.assertEqual([r.id for r in self.openStore().load().instances], ["00000002"])

    def test_pseudoInstanceRefused(self) -> None:
        store = self.openStore()
        self.assertRaises(ValueError, store.put, _record(PSEUDO_ID))
        self.assertRaises(ValueError, store.put, _record(""))

    def test_updateTraffic(self) -> None:
        store = self.openStore()
        store.put(_record("00000001", base=Traffic(7)))
        store.put(_record("00000002"))
        self.assertTrue(store.updateTraffic("00000001", Traffic(10, 20, 30, 2**64 - 1)))
        self.assertFalse(store.updateTraffic("ffffffff", Traffic(1)))
        self.assertEqual(
            store.updateTrafficMany({"00000002": Traffic(5, 6, 7, 8), "eeeeeeee": Traffic()}), 1
        )
        store.close()
        first, second = self.openStore().load().instances
        self.assertEqual(first.traffic, Traffic(10, 20, 30, 2**64 - 1))
        self.assertEqual(first.base, Traffic(7))
        self.assertEqual(first.alias, "web")
        self.assertEqual(second.traffic, Traffic(5, 6, 7, 8))

    def test_unusableDirectory(self) -> None:
        """
        A state directory that cannot be created is one clear L{StoreError}, not an
        C{OSError} traceback.
        """
        os.makedirs(self.directory, exist_ok=True)
        blocker = os.path.join(self.directory, "file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        error = self.assertRaises(StoreError, SyncStore(os.path.join(blocker, "state")).open)
        self.assertEqual(str(error), f"cannot use the state in {blocker}/state: Not a directory")

    def test_notOpen(self) -> None:
        store = SyncStore(self.directory)
        self.assertRaises(StoreError, store.load)
        store.open()
        self.assertRaises(StoreError, store.open)
        store.close()
        store.close()
        self.assertRaises(StoreError, store.put, _record())

    def test_newerSchemaRefused(self) -> None:
        self.openStore().close()
        path = os.path.join(self.directory, "nodepass.db")
        connection = sqlite3.connect(path)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.close()
        error = self.assertRaises(StoreError, SyncStore(self.directory).open)
        self.assertIn("schema version", str(error))
        self.assertIn(path, str(error))


class BackupTests(_Base):
    def test_backupReadable(self) -> None:
        store = self.openStore()
        store.put(_record())
        store.setMaster(masterID="0011223344556677")
        target = os.path.join(self.directory, "copy.db")
        store.backup(target)
        self.assertEqual(sorted(os.listdir(self.directory))[:2], ["copy.db", "nodepass.db"])
        self.assertFalse([n for n in os.listdir(self.directory) if n.endswith(".tmp")])
        copy = sqlite3.connect(target)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("PRAGMA quick_check").fetchone()[0], "ok")
        self.assertEqual(copy.execute("PRAGMA journal_mode").fetchone()[0], "delete")
        self.assertEqual(copy.execute("SELECT id FROM instances").fetchall(), [("a1b2c3d4",)])

    def test_periodicBackupReplaces(self) -> None:
        store = self.openStore()
        store.put(_record("00000001"))
        path = store.periodicBackup()
        self.assertEqual(path, os.path.join(self.directory, "nodepass.db.backup"))
        store.put(_record("00000002"))
        store.periodicBackup()
        copy = sqlite3.connect(path)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("SELECT count(*) FROM instances").fetchone()[0], 2)

    def corrupt(self, how: str) -> None:
        self.fill()
        path = os.path.join(self.directory, "nodepass.db")
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if how == "overwrite":
                f.seek(size // 2)
                f.write(b"\xff" * 4096)
            elif how == "truncate":
                f.truncate(size // 2)
            elif how == "empty":
                f.truncate(0)
            else:
                f.write(b"this is not an SQLite database, not at all....")

    def assertRecovered(self) -> None:
        before = set(os.listdir(self.directory))
        path = os.path.join(self.directory, "nodepass.db")
        with open(path, "rb") as f:
            corruptBytes = f.read()
        state = self.openStore().load()
        self.assertEqual(len(state.instances), 200)
        self.assertEqual(state.master.masterID, "0011223344556677")
        aside = [n for n in os.listdir(self.directory) if ".corrupt-" in n]
        self.assertEqual(len(aside), 1, aside)
        self.assertNotIn(aside[0], before)
        with open(os.path.join(self.directory, aside[0]), "rb") as f:
            self.assertEqual(f.read(), corruptBytes)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "nodepass.db.backup")))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_overwrittenFallsBack(self) -> None:
        self.corrupt("overwrite")
        self.assertRecovered()

    def test_truncatedFallsBack(self) -> None:
        self.corrupt("truncate")
        self.assertRecovered()

    def test_garbageHeaderFallsBack(self) -> None:
        self.corrupt("header")
        self.assertRecovered()

    def test_emptyFileFallsBack(self) -> None:
        """
        A database emptied to 0 bytes is not taken for a first start while a
        backup exists.
        """
        self.corrupt("empty")
        self.assertRecovered()

    def test_emptyFileWithoutBackupIsFresh(self) -> None:
        os.makedirs(self.directory)
        open(os.path.join(self.directory, "nodepass.db"), "wb").close()
        self.assertEqual(self.openStore().load().instances, ())

    def test_corruptWithoutBackup(self) -> None:
        self.corrupt("overwrite")
        os.unlink(os.path.join(self.directory, "nodepass.db.backup"))
        before = sorted(os.listdir(self.directory))
        error = self.assertRaises(StoreError, SyncStore(self.directory).open)
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(os.path.join(self.directory, "nodepass.db"), message)
        self.assertIn("no backup", message)
        # Nothing is moved, deleted or created.
        self.assertEqual(sorted(os.listdir(self.directory)), before)

    def test_corruptBackupToo(self) -> None:
        self.corrupt("overwrite")
        with open(os.path.join(self.directory, "nodepass.db.backup"), "r+b") as f:
            f.write(b"garbage garbage garbage garbage garbage garbage")
        error = self.assertRaises(StoreError, SyncStore(self.directory).open)
        self.assertIn("unusable", str(error))
        self.assertNotIn("\n", str(error))
        self.assertFalse([n for n in os.listdir(self.directory) if ".corrupt-" in n])

    def test_asideNamesNeverCollide(self) -> None:
        """
        Two recoveries within the same second keep both corrupt files.
        """
        for _ in range(2):
            self.corrupt("overwrite")
            store = SyncStore(self.directory, now=lambda: 1700000000.0)
            store.open()
            store.close()
        aside = sorted(n for n in os.listdir(self.directory) if ".corrupt-" in n)
        self.assertEqual(
            aside,
            ["nodepass.db.corrupt-20231114T221320Z", "nodepass.db.corrupt-20231114T221320Z-1"],
        )

    def test_missingDatabaseRestoresBackup(self) -> None:
        """
        A deleted database does not turn into empty state while a backup exists.
        """
        self.fill()
        os.unlink(os.path.join(self.directory, "nodepass.db"))
        self.assertEqual(len(self.openStore().load().instances), 200)


class GobTests(_Base):
    def test_undecodableGobRefused(self) -> None:
        """
        With no database but an undecodable Go state file, opening fails
        clearly and the gob file is left untouched.
        """
        gob = os.path.join(self.directory, "gob", "nodepass.gob")
        os.makedirs(os.path.dirname(gob))
        with open(gob, "wb") as f:
            f.write(b"\x00gob")
        error = self.assertRaises(StoreError, SyncStore(self.directory).open)
        self.assertEqual(
            str(error),
            f"Go state file {gob} cannot be imported (an empty message at byte 1); "
            "refusing to start (move the file away to start with empty state)",
        )
        with open(gob, "rb") as f:
            self.assertEqual(f.read(), b"\x00gob")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "nodepass.db")))

    def test_gobIgnoredOnceDatabaseExists(self) -> None:
        self.openStore().close()
        gob = os.path.join(self.directory, "gob", "nodepass.gob")
        os.makedirs(os.path.dirname(gob))
        with open(gob, "wb") as f:
            f.write(b"\x00gob")
        self.openStore()


class _CheckingStore(SyncStore):
    """
    A L{SyncStore} that records whether two operations ever overlapped and
    which threads ran them.
    """

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.active = 0
        self.overlapped = False
        self.threads: set[int] = set()

    def put(self, record: StoredInstance) -> None:
        self.threads.add(threading.get_ident())
        self.active += 1
        if self.active > 1:
            self.overlapped = True
        time.sleep(0.001)
        try:
            super().put(record)
        finally:
            self.active -= 1


class FacadeTests(TestCase):
    """
    L{Store} with a real thread pool and the real reactor.
    """

    def setUp(self) -> None:
        self.directory = _directory(self)

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        store = Store(self.directory, reactor)
        yield store.open()
        yield store.put(_record("00000001"))
        yield store.put(_record("00000002"))
        self.assertTrue((yield store.delete("00000002")))
        self.assertTrue((yield store.updateTraffic("00000001", Traffic(9, 9, 9, 9))))
        self.assertEqual((yield store.updateTrafficMany({"00000001": Traffic(1, 1, 1, 1)})), 1)
        values = yield store.setMaster(keyDigest=keyDigest(KEY), alias="a")
        self.assertEqual(values.alias, "a")
        backup = yield store.periodicBackup()
        self.assertTrue(os.path.exists(backup))
        yield store.backup(os.path.join(self.directory, "other.db"))
        yield store.close()
        yield store.close()
        self.assertRaises(StoreError, store.load)

        store = Store(self.directory, reactor)
        yield store.open()
        state = yield store.load()
        yield store.close()
        self.assertEqual([r.traffic for r in state.instances], [Traffic(1, 1, 1, 1)])
        self.assertEqual(state.master.keyDigest, keyDigest(KEY))

    @inlineCallbacks
    def test_concurrentPutsSerialised(self) -> Any:
        """
        Puts issued without waiting run one at a time, on one thread other
        than the reactor's, in call order.
        """
        core = _CheckingStore(self.directory)
        store = Store(self.directory, reactor, core=core)
        yield store.open()
        yield gatherResults([store.put(_record(f"{i % 10:08x}", alias=str(i))) for i in range(100)])
        state = yield store.load()
        yield store.close()
        self.assertFalse(core.overlapped)
        self.assertEqual(len(core.threads), 1)
        self.assertNotIn(threading.get_ident(), core.threads)
        self.assertEqual([r.alias for r in state.instances], [str(90 + i) for i in range(10)])

    @inlineCallbacks
    def test_openFailureStopsThread(self) -> Any:
        self.directory = _directory(self)
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "nodepass.db"), "wb") as f:
            f.write(b"garbage" * 1000)
        store = Store(self.directory, reactor)
        before = threading.active_count()
        d = store.open()
        yield self.assertFailure(d, StoreError)
        self.assertIsNone(store._pool)
        self.assertLessEqual(threading.active_count(), before)
        self.assertRaises(StoreError, store.load)


#: A database as schema version 1 (before webhooks) left it: written here in full, so the
#: test does not depend on the migration code it checks.
_VERSION_1 = """
CREATE TABLE master (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    key_digest TEXT NOT NULL DEFAULT '',
    master_id TEXT NOT NULL DEFAULT '',
    alias TEXT NOT NULL DEFAULT ''
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL, alias TEXT NOT NULL, type TEXT NOT NULL,
    url TEXT NOT NULL, config TEXT NOT NULL, restart INTEGER NOT NULL, meta TEXT NOT NULL,
    tcprx INTEGER NOT NULL DEFAULT 0, tcptx INTEGER NOT NULL DEFAULT 0,
    udprx INTEGER NOT NULL DEFAULT 0, udptx INTEGER NOT NULL DEFAULT 0,
    tcprx_base INTEGER NOT NULL DEFAULT 0, tcptx_base INTEGER NOT NULL DEFAULT 0,
    udprx_base INTEGER NOT NULL DEFAULT 0, udptx_base INTEGER NOT NULL DEFAULT 0,
    tcprx_reset INTEGER NOT NULL DEFAULT 0, tcptx_reset INTEGER NOT NULL DEFAULT 0,
    udprx_reset INTEGER NOT NULL DEFAULT 0, udptx_reset INTEGER NOT NULL DEFAULT 0
);
INSERT INTO master (singleton, key_digest, master_id, alias)
    VALUES (1, 'digest', '0011223344556677', 'old');
INSERT INTO instances (id, alias, type, url, config, restart, meta, tcprx)
    VALUES ('a1b2c3d4', 'web', 'server', 'server://:10101/127.0.0.1:8080', '', 1,
            '{"peer":{"sid":"","type":"","alias":""},"tags":{}}', 42);
PRAGMA user_version = 1;
"""

HOOK_SECRET = "s3cr3t-hmac-key"


def _hook(id: str = "0badc0de", **kwargs: Any) -> StoredWebhook:
    values: dict[str, Any] = {
        "url": "https://hooks.example/nodepass",
        "events": ("create", "status"),
        "secret": HOOK_SECRET,
        "created": 1765000000.25,
    }
    values.update(kwargs)
    return StoredWebhook(id=id, **values)


class WebhookStoreTests(_Base):
    def test_migratesVersion1(self) -> None:
        """
        A version 1 database opens as version 2: the webhooks table is added, empty, and
        the instances and master values are untouched.
        """
        os.makedirs(self.directory)
        connection = sqlite3.connect(os.path.join(self.directory, "nodepass.db"))
        connection.executescript(_VERSION_1)
        connection.close()
        store = self.openStore()
        state = store.load()
        self.assertEqual(SCHEMA_VERSION, 2)
        other = sqlite3.connect(store.path)
        self.addCleanup(other.close)
        self.assertEqual(other.execute("PRAGMA user_version").fetchone()[0], 2)
        self.assertEqual(state.master, MasterValues("digest", "0011223344556677", "old"))
        self.assertEqual([(r.id, r.traffic.tcprx) for r in state.instances], [("a1b2c3d4", 42)])
        self.assertEqual(store.webhooks(), ())
        store.putWebhook(_hook())
        self.assertEqual(store.webhooks(), (_hook(),))

    def test_crud(self) -> None:
        store = self.openStore()
        self.assertEqual(store.webhooks(), ())
        store.putWebhook(_hook("00000001"))
        store.putWebhook(_hook("00000002", events=["master"], secret=""))
        store.putWebhook(_hook("00000001", url="http://127.0.0.1:8000/x", events=("delete",)))
        hooks = store.webhooks()
        self.assertEqual([h.id for h in hooks], ["00000001", "00000002"])  # order kept
        self.assertEqual(hooks[0].url, "http://127.0.0.1:8000/x")
        self.assertEqual(hooks[0].events, ("delete",))
        self.assertEqual(hooks[0].secret, HOOK_SECRET)
        self.assertEqual(hooks[0].created, 1765000000.25)
        self.assertEqual(hooks[1].events, ("master",))
        self.assertTrue(store.deleteWebhook("00000001"))
        self.assertFalse(store.deleteWebhook("00000001"))
        self.assertEqual([h.id for h in store.webhooks()], ["00000002"])
        self.assertRaises(ValueError, store.putWebhook, _hook(""))

    def test_survivesReopen(self) -> None:
        store = SyncStore(self.directory)
        store.open()
        store.putWebhook(_hook())
        store.close()
        self.assertEqual(self.openStore().webhooks(), (_hook(),))

    def test_unreadableEvents(self) -> None:
        store = self.openStore()
        store.putWebhook(_hook())
        with sqlite3.connect(store.path) as other:
            other.execute("UPDATE webhooks SET events = 'nope'")
        other.close()
        self.assertRaises(StoreError, store.webhooks)

    def test_reprHidesSecret(self) -> None:
        hook = _hook(url="https://user:pw@hooks.example/")
        self.assertNotIn(HOOK_SECRET, repr(hook))
        self.assertNotIn("pw", repr(hook))


class WebhookFacadeTests(TestCase):
    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        store = Store(_directory(self), reactor)
        yield store.open()
        yield store.putWebhook(_hook("00000001"))
        yield store.putWebhook(_hook("00000002"))
        self.assertTrue((yield store.deleteWebhook("00000002")))
        hooks = yield store.webhooks()
        yield store.close()
        self.assertEqual(hooks, (_hook("00000001"),))
