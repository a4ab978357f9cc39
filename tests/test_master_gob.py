"""
Tests for L{nodepass.master.gob}, the decoder for Go's C{encoding/gob}, and
for the one-time import of a Go master's state file by
L{nodepass.master.store.SyncStore} (master spec §11.1, §11.6).

No Go toolchain is available to produce real files, so this module carries a
small gob I{encoder} written from the format description in Go's
C{encoding/gob} documentation (C{doc.go}) and the encoder's type handling
(C{type.go}, C{encoder.go}): type definitions are sent depth-first from the
top-level type (a map, then the struct it holds, then the struct's field
types in field order), each in its own message, then the value message.  The
encoder is checked against the byte vector that C{doc.go} works through.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from nodepass.master import gob
from nodepass.master.gob import (
    BOOL,
    BYTES,
    FLOAT,
    INT,
    INTERFACE,
    MAX_DEPTH,
    STRING,
    UINT,
    GobError,
    GoInstance,
    GoInterface,
    GoPeer,
    MapOf,
    Scalar,
    SliceOf,
    StructOf,
    decode,
    decodeInstances,
)
from nodepass.master.store import (
    GOB_PATH,
    PSEUDO_ID,
    MasterValues,
    StoredInstance,
    StoreError,
    SyncStore,
    Traffic,
    keyDigest,
)

KEY = "0123456789abcdef0123456789abcdef"
MASTER_ID = "0011223344556677"

# -- a minimal gob encoder (test helper) -------------------------------------------------------


def _uint(value: int) -> bytes:
    if value < 0x80:
        return bytes([value])
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([256 - len(raw)]) + raw


def _int(value: int) -> bytes:
    return _uint(((~value) << 1) | 1 if value < 0 else value << 1)


def _bytes(value: bytes) -> bytes:
    return _uint(len(value)) + value


def _string(value: str) -> bytes:
    return _bytes(value.encode("utf-8"))


def _float(value: float) -> bytes:
    bits = struct.pack(">d", value)
    return _uint(int.from_bytes(bits, "little"))


def _struct(fields: Iterable[tuple[int, bytes]]) -> bytes:
    """
    Fields as (field number, encoded value) in increasing order, then the end mark.
    """
    out, last = b"", -1
    for number, encoded in fields:
        out += _uint(number - last) + encoded
        last = number
    return out + b"\x00"


def _message(body: bytes) -> bytes:
    return _uint(len(body)) + body


@dataclass
class TStruct:
    name: str
    fields: list[tuple[str, int]]


@dataclass
class TMap:
    name: str
    key: int
    elem: int


@dataclass
class TSlice:
    name: str
    elem: int


@dataclass
class TOpaque:
    """
    A type with its own encoding (C{GobEncoder}), such as C{time.Time}.
    """

    name: str


TType = TStruct | TMap | TSlice | TOpaque
BASIC = range(1, 9)


def _common(name: str, typeId: int) -> bytes:
    fields = [(0, _string(name))] if name else []
    return _struct([*fields, (1, _int(typeId))])


def _wireType(typeId: int, t: TType) -> bytes:
    common = _common(t.name, typeId)
    if isinstance(t, TStruct):
        inner = [(0, common)]
        if t.fields:
            items = b"".join(_struct([(0, _string(n)), (1, _int(i))]) for n, i in t.fields)
            inner.append((1, _uint(len(t.fields)) + items))
        return _struct([(2, _struct(inner))])
    if isinstance(t, TMap):
        return _struct([(3, _struct([(0, common), (1, _int(t.key)), (2, _int(t.elem))]))])
    if isinstance(t, TSlice):
        return _struct([(1, _struct([(0, common), (1, _int(t.elem))]))])
    return _struct([(4, _struct([(0, common)]))])


def _definition(typeId: int, t: TType) -> bytes:
    return _message(_int(-typeId) + _wireType(typeId, t))


class GobWriter:
    """
    Encodes values of the types in C{types} the way Go's encoder does.
    """

    def __init__(self, types: Mapping[int, TType]) -> None:
        self.types = dict(types)

    def isZero(self, typeId: int, value: Any) -> bool:
        t = self.types.get(typeId)
        if t is None:
            return not value if typeId != INTERFACE else value is None
        if isinstance(t, TStruct):
            return False  # nested structs are always sent
        if isinstance(t, TMap):
            return value is None  # nil maps are left out, empty ones are sent
        return not value

    def value(self, typeId: int, value: Any) -> bytes:
        t = self.types.get(typeId)
        if t is None:
            if typeId == BOOL:
                return _uint(int(value))
            if typeId == INT:
                return _int(value)
            if typeId == UINT:
                return _uint(value)
            if typeId == FLOAT:
                return _float(value)
            if typeId == BYTES:
                return _bytes(value)
            if typeId == STRING:
                return _string(value)
            if typeId == INTERFACE and value is None:
                return _uint(0)
            raise AssertionError(f"cannot encode type {typeId}")
        if isinstance(t, TStruct):
            return _struct(
                (number, self.value(fieldType, value[name]))
                for number, (name, fieldType) in enumerate(t.fields)
                if name in value and not self.isZero(fieldType, value[name])
            )
        if isinstance(t, TMap):
            return _uint(len(value)) + b"".join(
                self.value(t.key, k) + self.value(t.elem, v) for k, v in value.items()
            )
        if isinstance(t, TSlice):
            return _uint(len(value)) + b"".join(self.value(t.elem, v) for v in value)
        return _bytes(value)

    def definitions(self, typeId: int, sent: set[int] | None = None) -> bytes:
        """
        The definitions Go sends for C{typeId}: the type itself, then the
        types it uses, depth first, each once.
        """
        sent = set() if sent is None else sent
        t = self.types.get(typeId)
        if t is None or typeId in sent:
            return b""
        sent.add(typeId)
        out = _definition(typeId, t)
        if isinstance(t, TStruct):
            inner = [i for _, i in t.fields]
        elif isinstance(t, TMap):
            inner = [t.key, t.elem]
        elif isinstance(t, TSlice):
            inner = [t.elem]
        else:
            inner = []
        for i in inner:
            out += self.definitions(i, sent)
        return out

    def stream(self, typeId: int, value: Any) -> bytes:
        """
        What C{Encoder.Encode(value)} writes on a fresh encoder.
        """
        singleton = b"" if isinstance(self.types.get(typeId), TStruct) else b"\x00"
        body = _int(typeId) + singleton + self.value(typeId, value)
        return self.definitions(typeId) + _message(body)


# The ids Go assigns on a fresh process: the struct first (structs take
# their id before their fields), the map last (maps after key and element).
INSTANCE, META, PEER, TAGS, TOP = 65, 66, 67, 68, 69
COUNTERS = ("TCPRX", "TCPTX", "UDPRX", "UDPTX")
GO_FIELDS: list[tuple[str, int]] = [
    ("ID", STRING),
    ("Alias", STRING),
    ("Type", STRING),
    ("Status", STRING),
    ("URL", STRING),
    ("Config", STRING),
    ("Restart", BOOL),
    ("Meta", META),
    *((name, INT) for name in ("Mode", "Ping", "Pool", "TCPS", "UDPS")),
    *((name, UINT) for name in COUNTERS),
    *((name + "Base", UINT) for name in COUNTERS),
    *((name + "Reset", UINT) for name in COUNTERS),
]


def goTypes(
    fields: list[tuple[str, int]] | None = None, extra: Mapping[int, TType] | None = None
) -> dict[int, TType]:
    """
    The types of a Go master's C{map[string]*Instance}.  Go names the
    struct reached through a map element and the top-level map C{""}.
    """
    types: dict[int, TType] = {
        INSTANCE: TStruct("", GO_FIELDS if fields is None else fields),
        META: TStruct("Meta", [("Peer", PEER), ("Tags", TAGS)]),
        PEER: TStruct("Peer", [("SID", STRING), ("Type", STRING), ("Alias", STRING)]),
        TAGS: TMap("map[string]string", STRING, STRING),
        TOP: TMap("", STRING, INSTANCE),
    }
    types.update(extra or {})
    return types


def goInstance(**values: Any) -> dict[str, Any]:
    """
    A Go C{Instance} value by field name; C{Meta} defaults to a zero struct.
    """
    result: dict[str, Any] = {"Meta": {"Peer": {}, "Tags": None}}
    result.update(values)
    return result


def goStateFile(
    instances: Mapping[str, Mapping[str, Any]], types: Mapping[int, TType] | None = None
) -> bytes:
    return GobWriter(goTypes() if types is None else types).stream(TOP, dict(instances))


def sampleState() -> dict[str, dict[str, Any]]:
    return {
        PSEUDO_ID: goInstance(ID=PSEUDO_ID, URL=KEY, Config=MASTER_ID, Alias="my master"),
        "a1b2c3d4": goInstance(
            ID="a1b2c3d4",
            Alias="web",
            Type="server",
            Status="running",
            URL="server://secret@:10101/127.0.0.1:8080",
            Config="server://secret@:10101/127.0.0.1:8080?log=info",
            Restart=True,
            Meta={"Peer": {"SID": "s1", "Type": "1", "Alias": "peer"}, "Tags": {"env": "prod"}},
            Mode=1,
            Ping=12,
            Pool=3,
            TCPS=4,
            UDPS=5,
            TCPRX=100,
            TCPTX=200,
            UDPRX=300,
            UDPTX=400,
            TCPRXBase=10,
            TCPTXBase=20,
            UDPRXBase=30,
            UDPTXBase=40,
            TCPRXReset=1,
            TCPTXReset=2,
            UDPRXReset=3,
            UDPTXReset=4,
        ),
        "0000beef": goInstance(ID="0000beef", Type="client", URL="client://k@1.2.3.4:10101/:80"),
    }


# -- the documentation's vectors ---------------------------------------------------------------

#: C{doc.go}: C{type Point struct {X, Y int}} and C{Point{22, 33}} on a fresh encoder.
POINT = bytes.fromhex(
    "1fff810301010550 6f696e7401ff8200 0102010158010400 0101590104000000 07ff82012c014200"
)


def _single(typeId: int, encoded: bytes) -> bytes:
    """
    A stream holding one predefined-type value (singleton delta 0 first).
    """
    return _message(_int(typeId) + b"\x00" + encoded)


class DocumentationVectorTests(SynchronousTestCase):
    def test_point(self) -> None:
        """
        The worked example of Go's C{doc.go} decodes, generically and into a
        described struct.
        """
        self.assertEqual(decode(POINT), {"X": 22, "Y": 33})
        target = StructOf("Point", (("X", Scalar(INT)), ("Y", Scalar(INT))))
        self.assertEqual(decode(POINT, target), {"X": 22, "Y": 33})

    def test_encoderMatchesDocumentation(self) -> None:
        """
        The test encoder writes exactly the documented bytes.
        """
        writer = GobWriter({65: TStruct("Point", [("X", INT), ("Y", INT)])})
        self.assertEqual(writer.stream(65, {"X": 22, "Y": 33}), POINT)

    def test_secondTransmissionAlone(self) -> None:
        """
        The second-transmission bytes alone name a type the stream never defined.
        """
        error = self.assertRaises(GobError, decode, POINT[-8:])
        self.assertIn("type id 65 is not defined", str(error))

    def test_singleton(self) -> None:
        """
        C{doc.go}: the int 3 at top level is C{03 04 00 06}.
        """
        self.assertEqual(decode(bytes.fromhex("03040006")), 3)

    def test_numbers(self) -> None:
        """
        C{doc.go}: 0 is C{00}, 7 is C{07}, 256 is C{FE 01 00}, -129 is
        C{FE 01 01}, 17.0 is C{FE 31 40}; the largest uint64 takes 8 bytes.
        """
        self.assertEqual(decode(_single(UINT, b"\x00")), 0)
        self.assertEqual(decode(_single(UINT, b"\x07")), 7)
        self.assertEqual(decode(_single(UINT, bytes.fromhex("fe0100"))), 256)
        self.assertEqual(decode(_single(INT, bytes.fromhex("fe0101"))), -129)
        self.assertEqual(decode(_single(FLOAT, bytes.fromhex("fe3140"))), 17.0)
        self.assertEqual(decode(_single(UINT, b"\xf8" + b"\xff" * 8)), 2**64 - 1)
        self.assertEqual(decode(_single(INT, b"\xf8" + b"\xff" * 8)), -(2**63))
        self.assertEqual(_int(-129), bytes.fromhex("fe0101"))
        self.assertEqual(_float(17.0), bytes.fromhex("fe3140"))

    def test_nonMinimalInteger(self) -> None:
        """
        Like Go, a longer-than-needed integer is accepted.
        """
        self.assertEqual(decode(_single(UINT, b"\xfe\x00\x05")), 5)

    def test_otherScalars(self) -> None:
        self.assertEqual(decode(_single(BOOL, b"\x01")), True)
        self.assertEqual(decode(_single(STRING, _string("héllo"))), "héllo")
        self.assertEqual(decode(_single(BYTES, _bytes(b"\x00\xff"))), b"\x00\xff")
        self.assertEqual(decode(_single(7, _float(1.5) + _float(-2.0))), complex(1.5, -2.0))
        self.assertIsNone(decode(_single(INTERFACE, b"\x00")))


# -- decoding the Go master's map --------------------------------------------------------------


class InstancesTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        Every field of several records comes back.
        """
        records = decodeInstances(goStateFile(sampleState()))
        self.assertEqual(set(records), {PSEUDO_ID, "a1b2c3d4", "0000beef"})
        self.assertEqual(
            records["a1b2c3d4"],
            GoInstance(
                id="a1b2c3d4",
                alias="web",
                type="server",
                status="running",
                url="server://secret@:10101/127.0.0.1:8080",
                config="server://secret@:10101/127.0.0.1:8080?log=info",
                restart=True,
                peer=GoPeer("s1", "1", "peer"),
                tags={"env": "prod"},
                mode=1,
                ping=12,
                pool=3,
                tcps=4,
                udps=5,
                traffic=(100, 200, 300, 400),
                base=(10, 20, 30, 40),
                reset=(1, 2, 3, 4),
            ),
        )
        pseudo = records[PSEUDO_ID]
        self.assertEqual((pseudo.url, pseudo.config, pseudo.alias), (KEY, MASTER_ID, "my master"))

    def test_zeroFieldsOmitted(self) -> None:
        """
        Zero fields are not in the stream and decode as zero (C{Restart} false).
        """
        data = goStateFile({"00000001": goInstance()})
        records = decodeInstances(data)
        self.assertEqual(records, {"00000001": GoInstance()})
        # The key, then an Instance holding only Meta (delta 8) holding only
        # Peer (delta 1), which is empty: three end marks.
        self.assertTrue(data.endswith(_string("00000001") + bytes.fromhex("08 01 00 00 00")))

    def test_unicode(self) -> None:
        alias = "节点 🚀 é"
        data = goStateFile(
            {
                "ü0000001": goInstance(
                    Alias=alias, Meta={"Peer": {"Alias": "ピア"}, "Tags": {"ключ": "значение"}}
                )
            }
        )
        record = decodeInstances(data)["ü0000001"]
        self.assertEqual(record.alias, alias)
        self.assertEqual(record.peer.alias, "ピア")
        self.assertEqual(record.tags, {"ключ": "значение"})

    def test_extremeNumbers(self) -> None:
        top = 2**64 - 1
        data = goStateFile(
            {
                "x": goInstance(
                    TCPRX=top, UDPTXBase=top, UDPTXReset=top, Mode=-1, Ping=-(2**31), UDPS=2**31 - 1
                )
            }
        )
        record = decodeInstances(data)["x"]
        self.assertEqual(record.traffic, (top, 0, 0, 0))
        self.assertEqual(record.base, (0, 0, 0, top))
        self.assertEqual(record.reset, (0, 0, 0, top))
        self.assertEqual((record.mode, record.ping, record.udps), (-1, -(2**31), 2**31 - 1))

    def test_tags(self) -> None:
        """
        A nil tag map is C{None}; an empty one, which Go does send, is C{{}}.
        """
        data = goStateFile(
            {"a": goInstance(), "b": goInstance(Meta={"Peer": {}, "Tags": {}})},
        )
        records = decodeInstances(data)
        self.assertIsNone(records["a"].tags)
        self.assertEqual(records["b"].tags, {})

    def test_unknownFieldsSkipped(self) -> None:
        """
        Fields this reader does not know (a custom-encoded time, a bool, a
        slice, a nested struct with a map, a nil interface) are skipped by
        their type.
        """
        fields = [
            ("Cmd", 72),
            *GO_FIELDS[:7],
            ("Deleted", BOOL),
            *GO_FIELDS[7:],
            ("LastCheckPoint", 70),
            ("Notes", 71),
            ("Err", INTERFACE),
            ("Score", FLOAT),
        ]
        types = goTypes(
            fields,
            {
                70: TOpaque("Time"),
                71: TSlice("[]string", STRING),
                72: TStruct("Cmd", [("Path", STRING), ("Env", 73), ("Sizes", 74)]),
                73: TMap("map[string]int", STRING, INT),
                74: TSlice("[]uint", UINT),
            },
        )
        state = sampleState()
        state["a1b2c3d4"].update(
            Cmd={"Path": "/bin/np", "Env": {"A": -1}, "Sizes": [1, 2**64 - 1]},
            Deleted=True,
            LastCheckPoint=b"\x01\x00\x00\x00\x0e\xdd",
            Notes=["one", "two"],
            Err=None,
            Score=2.5,
        )
        plain = decodeInstances(goStateFile(sampleState()))
        self.assertEqual(decodeInstances(goStateFile(state, types)), plain)
        generic = decode(goStateFile(state, types))
        self.assertEqual(generic["a1b2c3d4"]["Notes"], ["one", "two"])
        self.assertEqual(generic["a1b2c3d4"]["Cmd"]["Sizes"], [1, 2**64 - 1])
        self.assertEqual(generic["a1b2c3d4"]["LastCheckPoint"], b"\x01\x00\x00\x00\x0e\xdd")

    def test_fieldsMatchedByName(self) -> None:
        """
        A definition listing the fields in another order is read by name.
        """
        types = goTypes(list(reversed(GO_FIELDS)))
        types[META] = TStruct("Meta", [("Tags", TAGS), ("Peer", PEER)])
        types[PEER] = TStruct("Peer", [("Alias", STRING), ("SID", STRING), ("Type", STRING)])
        self.assertEqual(
            decodeInstances(goStateFile(sampleState(), types)),
            decodeInstances(goStateFile(sampleState())),
        )

    def test_missingFields(self) -> None:
        """
        A Go version that does not write the base and reset counters (they
        were unexported there) gives zeros for them.
        """
        types = goTypes(GO_FIELDS[:-8])
        records = decodeInstances(goStateFile(sampleState(), types))
        record = records["a1b2c3d4"]
        self.assertEqual(record.traffic, (100, 200, 300, 400))
        self.assertEqual((record.base, record.reset), ((0, 0, 0, 0), (0, 0, 0, 0)))

    def test_otherIdsAndNames(self) -> None:
        """
        Type ids and type names are whatever the stream says.
        """
        types: dict[int, TType] = {
            300: TStruct("Instance", [*GO_FIELDS[:7], ("Meta", 64), *GO_FIELDS[8:]]),
            64: TStruct("meta", [("Peer", 1000), ("Tags", 99)]),
            1000: TStruct("peer", [("SID", STRING), ("Type", STRING), ("Alias", STRING)]),
            99: TMap("map[string]string", STRING, STRING),
            2**31 - 1: TMap("map[string]*master.Instance", STRING, 300),
        }
        data = GobWriter(types).stream(2**31 - 1, sampleState())
        self.assertEqual(decodeInstances(data), decodeInstances(goStateFile(sampleState())))

    def test_interfaceValue(self) -> None:
        """
        A non-nil interface value carries its concrete type name, id and a
        byte count; it is decoded, or skipped when not wanted.
        """
        inner = _int(INT) + _uint(2) + b"\x00" + _int(-3)
        body = _int(65) + _struct([(0, _string("x")), (1, _string("int") + inner)])
        data = _definition(65, TStruct("T", [("Name", STRING), ("Any", INTERFACE)]))
        data += _message(body)
        self.assertEqual(decode(data), {"Name": "x", "Any": GoInterface("int", -3)})
        target = StructOf("T", (("Name", Scalar(STRING)),))
        self.assertEqual(decode(data, target), {"Name": "x"})

    def test_interfaceWithDefinition(self) -> None:
        """
        Type definitions inside an interface value, as Go's decoder reads them.
        """
        definition = _int(-70) + _wireType(70, TStruct("P", [("X", INT)]))
        value = _struct([(0, _int(5))])
        inner = definition + _uint(1 + len(value)) + _int(70) + _bytes(value)
        body = _int(65) + _struct([(0, _string("main.P") + inner)])
        data = _definition(65, TStruct("T", [("Any", INTERFACE)])) + _message(body)
        self.assertEqual(decode(data), {"Any": GoInterface("main.P", {"X": 5})})

    def test_arrays(self) -> None:
        """
        Arrays carry their length in the type; the count must match it.
        """
        array = _struct([(0, _common("[2]int", 66)), (1, _int(INT)), (2, _int(2))])
        head = _definition(65, TStruct("A", [("V", 66)])) + _message(
            _int(-66) + _struct([(0, array)])
        )
        good = _message(_int(65) + _struct([(0, _uint(2) + _int(1) + _int(-1))]))
        self.assertEqual(decode(head + good), {"V": [1, -1]})
        bad = _message(_int(65) + _struct([(0, _uint(3) + _int(1) + _int(-1) + _int(0))]))
        _fails(self, head + bad, "an array of 3 elements for a type of length 2", False)
        negative = _struct([(0, _common("", 66)), (1, _int(INT)), (2, _int(-1))])
        _fails(self, _message(_int(-66) + _struct([(0, negative)])), "negative length", False)

    def test_generic(self) -> None:
        """
        Without a target, the stream's own description is used.
        """
        state = decode(goStateFile(sampleState()))
        self.assertEqual(
            state[PSEUDO_ID],
            {
                "ID": PSEUDO_ID,
                "Alias": "my master",
                "URL": KEY,
                "Config": MASTER_ID,
                "Meta": {"Peer": {}},
            },
        )

    def test_typedTargets(self) -> None:
        data = _definition(65, TSlice("[]string", STRING))
        data += _message(_int(65) + b"\x00" + _uint(2) + _string("a") + _string("b"))
        self.assertEqual(decode(data, SliceOf(Scalar(STRING))), ["a", "b"])
        self.assertRaises(GobError, decode, data, SliceOf(Scalar(INT)))
        self.assertRaises(GobError, decode, data, MapOf(Scalar(STRING), Scalar(STRING)))


# -- malformed input ---------------------------------------------------------------------------


def _fails(case: SynchronousTestCase, data: bytes, text: str, instances: bool = True) -> None:
    error = case.assertRaises(GobError, decodeInstances if instances else decode, data)
    case.assertIn(text, str(error))
    case.assertNotIn("\n", str(error))


def _point(value: bytes) -> bytes:
    """
    The documentation's Point definition followed by a value message body.
    """
    return POINT[:32] + _message(_int(65) + value)


class MalformedTests(SynchronousTestCase):
    def test_truncated(self) -> None:
        """
        Every proper prefix of a valid stream is refused.
        """
        data = goStateFile(sampleState())
        for size in range(len(data)):
            self.assertRaises(GobError, decodeInstances, data[:size])

    def test_empty(self) -> None:
        _fails(self, b"", "empty input")

    def test_messageLength(self) -> None:
        _fails(self, b"\x7f\x04\x00", "a message of 127 bytes but only 2 left")
        _fails(self, b"\x00", "an empty message")
        _fails(self, b"\xf8" + b"\xff" * 8, "a message of")

    def test_integerTooLong(self) -> None:
        _fails(self, b"\xf7" + b"\x01" * 9, "unsigned integer of 9 bytes", False)
        _fails(self, b"\x80", "unsigned integer of 128 bytes", False)
        _fails(self, _single(UINT, b"\xf7" + b"\x00" * 9), "unsigned integer of 9 bytes", False)

    def test_stringLength(self) -> None:
        _fails(self, _single(STRING, b"\x7f" + b"abc"), "a string of length 127", False)
        _fails(self, _single(STRING, b"\xf8" + b"\xff" * 8), "a string of length", False)

    def test_absurdCounts(self) -> None:
        definitions = GobWriter(goTypes()).definitions(TOP)
        body = _int(TOP) + b"\x00" + _uint(2**63) + b"\x00" * 8
        _fails(self, definitions + _message(body), "a map of 9223372036854775808 elements")
        body = _int(TOP) + b"\x00" + _uint(5) + (_string("k") + b"\x00") * 2
        _fails(self, definitions + _message(body), "a map of 5 elements but only 6 bytes left")
        slices = _definition(65, TSlice("[]int", INT))
        body = _int(65) + b"\x00" + _uint(2**64 - 1)
        _fails(self, slices + _message(body), "a slice of", False)

    def test_deepNesting(self) -> None:
        """
        A recursive type (C{type T []T}) nested deeper than L{MAX_DEPTH}.
        """
        slices = _definition(65, TSlice("T", 65))
        ok = _message(_int(65) + b"\x00" + b"\x01" * (MAX_DEPTH - 1) + b"\x00")
        self.assertIsInstance(decode(slices + ok), list)
        for depth in (MAX_DEPTH, MAX_DEPTH * 100):
            deep = _message(_int(65) + b"\x00" + b"\x01" * depth + b"\x00")
            _fails(self, slices + deep, "nested more than", False)
        structs = _definition(65, TStruct("T", [("Next", 65)]))
        deep = _message(_int(65) + b"\x01" * 10000 + b"\x00" * 10000)
        _fails(self, structs + deep, "nested more than", False)

    def test_deepInterfaces(self) -> None:
        structs = _definition(65, TStruct("T", [("Any", INTERFACE)]))
        value = _struct([])
        for _ in range(MAX_DEPTH + 5):
            value = _struct([(0, _string("T") + _int(65) + _bytes(value))])
        _fails(self, structs + _message(_int(65) + value), "nested more than", False)

    def test_typeIds(self) -> None:
        point = POINT[:32]
        _fails(self, _message(_int(-5) + _wireType(5, TStruct("X", []))), "reserved", False)
        _fails(self, _message(_int(-(2**31)) + b"\x00"), "invalid type id", False)
        _fails(self, point + point + POINT[32:], "type id 65 is defined twice", False)
        _fails(self, _message(b"\x00\x00"), "type id 0", False)
        _fails(self, _message(_int(9) + b"\x00\x00"), "type id 9 is not defined", False)
        dangling = _definition(65, TStruct("P", [("X", 80)]))
        _fails(self, dangling + _message(_int(65) + b"\x01\x00\x00"), "type id 80", False)
        zero = _message(
            _int(-65) + _struct([(2, _struct([(1, _uint(1) + _struct([(0, _string("X"))]))]))])
        )
        _fails(self, zero + _message(_int(65) + b"\x00"), "invalid type id 0", False)

    def test_wireTypes(self) -> None:
        _fails(self, _message(_int(-65) + b"\x00"), "describes 0 types", False)
        both = _struct([(1, _struct([(1, _int(INT))])), (2, _struct([]))])
        _fails(self, _message(_int(-65) + both), "describes 2 types", False)
        twice = TStruct("P", [("X", INT), ("X", INT)])
        _fails(self, _definition(65, twice), "field 'X' twice", False)
        unnamed = TStruct("P", [("", INT)])
        _fails(self, _definition(65, unnamed), "without a name", False)
        stray = b"\x20" + POINT[1:32] + b"\x00" + POINT[32:]
        _fails(self, stray, "1 stray bytes after a type definition", False)

    def test_wrongTypes(self) -> None:
        """
        The Go map must be C{map[string]struct} with fields of the expected kinds.
        """
        wrong = {**goTypes(), TOP: TMap("", INT, INSTANCE)}
        _fails(
            self,
            GobWriter(wrong).stream(TOP, {1: goInstance()}),
            "int value cannot be read as string",
        )
        signed = goTypes([(n, INT if n == "TCPRX" else t) for n, t in GO_FIELDS])
        _fails(
            self,
            goStateFile({"x": goInstance(TCPRX=1)}, signed),
            "int value cannot be read as uint64",
        )
        big = goTypes([(n, INT) if n == "Mode" else (n, t) for n, t in GO_FIELDS])
        _fails(self, goStateFile({"x": goInstance(Mode=2**31)}, big), "does not fit int32")
        _fails(self, goStateFile({"x": goInstance(Ping=-(2**31) - 1)}), "does not fit int32")
        ints = {**goTypes(), TOP: TMap("", STRING, INT)}
        _fails(self, GobWriter(ints).stream(TOP, {"x": 1}), "int value cannot be read as struct")
        unrelated = {**goTypes(), INSTANCE: TStruct("", [("Foo", INT)])}
        _fails(self, GobWriter(unrelated).stream(TOP, {"x": {"Foo": 1}}), "no field in common")
        self.assertRaises(GobError, decodeInstances, POINT)
        self.assertRaises(GobError, decodeInstances, bytes.fromhex("03040006"))

    def test_structFieldNumber(self) -> None:
        _fails(self, _point(b"\x03\x02\x00"), "field number 2 of a struct with 2 fields", False)

    def test_trailingData(self) -> None:
        _fails(self, POINT + b"\x00", "1 bytes after the value", False)
        _fails(self, POINT + POINT[-8:], "8 bytes after the value", False)
        _fails(
            self, POINT[:32] + _message(_int(65) + b"\x00\x00"), "unread bytes at the end", False
        )

    def test_badBool(self) -> None:
        _fails(self, _single(BOOL, b"\x02"), "bool value 2", False)

    def test_badUtf8(self) -> None:
        _fails(self, _single(STRING, _bytes(b"\xff\xfe")), "not valid UTF-8", False)
        _fails(self, _single(STRING, _bytes(b"a\xc3")), "not valid UTF-8", False)
        _fails(self, _single(STRING, _bytes(b"\xed\xb3\xbf")), "not valid UTF-8", False)

    def test_duplicateKey(self) -> None:
        entry = _string("k") + _struct([(0, _string("k"))])
        body = _int(TOP) + b"\x00" + _uint(2) + entry + entry
        data = GobWriter(goTypes()).definitions(TOP) + _message(body)
        _fails(self, data, "the map key 'k' appears twice")
        single = _int(TOP) + b"\x00" + _uint(1) + entry
        definitions = GobWriter(goTypes()).definitions(TOP)
        self.assertEqual(decodeInstances(definitions + _message(single)), {"k": GoInstance(id="k")})

    def test_singletonDelta(self) -> None:
        _fails(self, _message(_int(INT) + b"\x01\x06"), "zero field delta", False)

    def test_customEncodingNotWanted(self) -> None:
        types = goTypes([*GO_FIELDS[:5], ("Config", 70), *GO_FIELDS[6:]], {70: TOpaque("Time")})
        _fails(self, goStateFile({"x": goInstance(Config=b"\x01")}, types), "custom encoding")


# -- properties --------------------------------------------------------------------------------

_VALID = goStateFile(sampleState())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_randomBytes(data: bytes) -> None:
    """
    Random bytes are decoded or refused with L{GobError}, nothing else.
    """
    for function in (decode, decodeInstances):
        try:
            function(data)
        except GobError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_VALID) - 1))
def test_randomTruncation(size: int) -> None:
    try:
        decodeInstances(_VALID[:size])
    except GobError:
        return
    raise AssertionError(f"a stream cut at {size} bytes was accepted")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(_VALID) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
    st.binary(max_size=8),
)
def test_randomCorruption(changes: list[tuple[int, int]], tail: bytes) -> None:
    """
    A valid stream with bytes changed (and maybe some appended) is decoded or
    refused with L{GobError}, nothing else.
    """
    data = bytearray(_VALID)
    for position, value in changes:
        data[position] = value
    for function in (decode, decodeInstances):
        try:
            function(bytes(data) + tail)
        except GobError:
            pass


_text = st.text(max_size=12)
_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_instances = st.dictionaries(
    st.text(max_size=10),
    st.fixed_dictionaries(
        {
            "ID": _text,
            "Alias": _text,
            "URL": _text,
            "Restart": st.booleans(),
            "Meta": st.fixed_dictionaries(
                {
                    "Peer": st.fixed_dictionaries({"SID": _text, "Alias": _text}),
                    "Tags": st.none() | st.dictionaries(_text, _text, max_size=3),
                }
            ),
            "Mode": _i32,
            "UDPS": _i32,
            "TCPRX": _u64,
            "UDPTXBase": _u64,
            "TCPTXReset": _u64,
        }
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(_instances)
def test_randomRoundTrip(instances: dict[str, dict[str, Any]]) -> None:
    records = decodeInstances(goStateFile(instances))
    assert set(records) == set(instances)
    for key, value in instances.items():
        record = records[key]
        assert (record.id, record.alias, record.url) == (value["ID"], value["Alias"], value["URL"])
        assert record.restart == value["Restart"]
        assert record.peer == GoPeer(
            value["Meta"]["Peer"]["SID"], "", value["Meta"]["Peer"]["Alias"]
        )
        assert record.tags == value["Meta"]["Tags"]
        assert (record.mode, record.udps) == (value["Mode"], value["UDPS"])
        assert record.traffic == (value["TCPRX"], 0, 0, 0)
        assert record.base == (0, 0, 0, value["UDPTXBase"])
        assert record.reset == (0, value["TCPTXReset"], 0, 0)


# -- the store's import ------------------------------------------------------------------------


class ImportTests(SynchronousTestCase):
    def setUp(self) -> None:
        parent = tempfile.mkdtemp(prefix="nodepass-gob-")
        self.addCleanup(shutil.rmtree, parent, True)
        self.directory = os.path.join(parent, "state")
        self.gob = os.path.join(self.directory, GOB_PATH)
        os.makedirs(os.path.dirname(self.gob))

    def writeGob(self, data: bytes) -> None:
        with open(self.gob, "wb") as f:
            f.write(data)

    def openStore(self) -> SyncStore:
        store = SyncStore(self.directory)
        store.open()
        self.addCleanup(store.close)
        return store

    def files(self) -> set[str]:
        return set(os.listdir(self.directory))

    def test_import(self) -> None:
        """
        The master values come from the pseudo-instance (the key only as its
        digest), the other records become instances in id order with their
        meta, traffic and bookkeeping.
        """
        self.writeGob(goStateFile(sampleState()))
        state = self.openStore().load()
        self.assertEqual(
            state.master,
            MasterValues(keyDigest=keyDigest(KEY), masterID=MASTER_ID, alias="my master"),
        )
        self.assertEqual([i.id for i in state.instances], ["0000beef", "a1b2c3d4"])
        beef, web = state.instances
        self.assertEqual(
            web,
            StoredInstance(
                id="a1b2c3d4",
                alias="web",
                type="server",
                url="server://secret@:10101/127.0.0.1:8080",
                config="server://secret@:10101/127.0.0.1:8080?log=info",
                restart=True,
                meta={"peer": {"sid": "s1", "type": "1", "alias": "peer"}, "tags": {"env": "prod"}},
                traffic=Traffic(100, 200, 300, 400),
                base=Traffic(10, 20, 30, 40),
                offset=Traffic(1, 2, 3, 4),
            ),
        )
        self.assertEqual(
            beef,
            StoredInstance(
                id="0000beef",
                type="client",
                url="client://k@1.2.3.4:10101/:80",
                restart=False,
                meta={"peer": {"sid": "", "type": "", "alias": ""}, "tags": {}},
            ),
        )

    def test_keyNeverStored(self) -> None:
        """
        The plaintext key is in none of the files the store writes.
        """
        self.writeGob(goStateFile(sampleState()))
        self.openStore().close()
        for name in self.files():
            path = os.path.join(self.directory, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    self.assertNotIn(KEY.encode(), f.read(), name)

    def test_gobUnchanged(self) -> None:
        data = goStateFile(sampleState())
        self.writeGob(data)
        before = os.stat(self.gob)
        self.openStore()
        with open(self.gob, "rb") as f:
            self.assertEqual(f.read(), data)
        after = os.stat(self.gob)
        self.assertEqual((before.st_mtime_ns, before.st_mode), (after.st_mtime_ns, after.st_mode))
        self.assertEqual(os.listdir(os.path.dirname(self.gob)), ["nodepass.gob"])

    def test_importedOnce(self) -> None:
        """
        Once the database exists, the Go file is ignored, even if it changed.
        """
        self.writeGob(goStateFile(sampleState()))
        store = SyncStore(self.directory)
        store.open()
        store.delete("0000beef")
        store.close()
        self.writeGob(goStateFile({"ffffffff": goInstance()}))
        state = self.openStore().load()
        self.assertEqual([i.id for i in state.instances], ["a1b2c3d4"])
        self.assertEqual(state.master.masterID, MASTER_ID)

    def test_logged(self) -> None:
        self.writeGob(goStateFile(sampleState()))
        with capturedLogs() as events:
            self.openStore()
        texts = [formatEvent(event) for event in events]
        self.assertIn(f"Imported 2 instances from the Go state file {self.gob}", texts)
        self.assertFalse([t for t in texts if KEY in t or keyDigest(KEY) in t])

    def test_undecodable(self) -> None:
        """
        A file that cannot be decoded stops the start with an error naming
        the file and the reason, and leaves no database behind that would
        later shadow it.
        """
        data = goStateFile(sampleState())[:-1]
        self.writeGob(data)
        before = self.files()
        store = SyncStore(self.directory)
        error = self.assertRaises(StoreError, store.open)
        self.assertIn(self.gob, str(error))
        self.assertIn("cannot be imported (a message of", str(error))
        self.assertNotIn("\n", str(error))
        self.assertEqual(self.files(), before)
        # Still refused on the next start.
        self.assertRaises(StoreError, SyncStore(self.directory).open)
        with open(self.gob, "rb") as f:
            self.assertEqual(f.read(), data)
        # Moving the file away lets the master start empty.
        os.rename(self.gob, self.gob + ".old")
        self.assertEqual(self.openStore().load().instances, ())

    def test_unreadable(self) -> None:
        os.makedirs(self.gob)
        error = self.assertRaises(StoreError, SyncStore(self.directory).open)
        self.assertIn(f"Go state file {self.gob} cannot be read", str(error))
        self.assertNotIn("nodepass.db", self.files())

    def test_unstorableRecord(self) -> None:
        self.writeGob(goStateFile({"": goInstance()}))
        error = self.assertRaises(StoreError, SyncStore(self.directory).open)
        self.assertIn("an instance with an empty id", str(error))
        self.assertNotIn("nodepass.db", self.files())

    def test_noPseudoInstance(self) -> None:
        """
        Without the pseudo-instance no master values are stored, so the
        master mints a key and an ID as on a first start.
        """
        self.writeGob(goStateFile({"a1b2c3d4": goInstance(URL="server://:1/:2")}))
        with capturedLogs() as events:
            state = self.openStore().load()
        self.assertEqual(state.master, MasterValues())
        self.assertEqual(len(state.instances), 1)
        self.assertTrue(any("no API key record" in formatEvent(e) for e in events))

    def test_emptyKey(self) -> None:
        """
        An empty key is stored as no key (not as the digest of C{""}).
        """
        self.writeGob(goStateFile({PSEUDO_ID: goInstance(Config=MASTER_ID)}))
        self.assertEqual(self.openStore().load().master, MasterValues(masterID=MASTER_ID))

    def test_backupWins(self) -> None:
        """
        A missing database with a backup is restored from the backup, not
        imported from the Go file (the existing order of L{SyncStore.open}).
        """
        self.writeGob(goStateFile(sampleState()))
        store = SyncStore(self.directory)
        store.open()
        store.delete("a1b2c3d4")
        store.periodicBackup()
        store.close()
        os.unlink(os.path.join(self.directory, "nodepass.db"))
        self.assertEqual([i.id for i in self.openStore().load().instances], ["0000beef"])


def test_moduleExports() -> None:
    for name in gob.__all__:
        assert hasattr(gob, name), name
