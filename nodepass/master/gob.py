"""
A small, strict decoder for Go's C{encoding/gob} wire format, enough to read
the state file of a Go NodePass master (master spec §11.1, §11.6).

The format, bottom-up
=====================

  - An B{unsigned integer} below 128 is one byte.  Larger values are a byte
    holding the negated byte count (C{0xFF} for one byte, C{0xF8} for eight)
    followed by that many big-endian bytes.  A B{signed integer} is carried
    in an unsigned one: bit 0 says whether the rest is to be complemented
    (C{-129} is C{FE 01 01}).  A B{bool} is the unsigned integer 0 or 1.  A
    B{float} is the IEEE-754 binary64 bit pattern, byte-reversed and sent as
    an unsigned integer (C{17.0} is C{FE 31 40}); a B{complex} is two floats.
  - B{Strings} and B{byte slices} are a length followed by the bytes.
  - B{Slices} and B{arrays} are an element count followed by the elements;
    B{maps} are a pair count followed by key, element pairs.  Every element
    is sent, even a zero one.
  - A B{struct} is a sequence of (field number delta, field value) pairs in
    increasing field order, ending with a zero delta.  Fields holding their
    zero value are left out, so a decoder must supply zeros for missing
    fields.  A pointer is sent as the value it points to.
  - An B{interface} value is the registered name of its concrete type (empty
    for nil), the concrete type id, a byte count and the value.
  - A B{message} is a byte count followed by a signed type id.  A negative id
    introduces the definition of type C{-id}: a C{wireType} struct describing
    a struct (name, then C{(field name, type id)} pairs), a map (key and
    element type ids), a slice, an array or a type with its own binary
    encoding.  A positive id is followed by one value of that type; a value
    that is not a struct is first preceded by a zero delta (a "singleton").

The encoder sends every type definition a value needs before the value, so a
stream is C{(definition message)* value message}.  Type ids below 64 are
predefined: C{bool} 1, C{int} 2, C{uint} 3, C{float} 4, C{[]byte} 5,
C{string} 6, C{complex} 7, C{interface} 8, and the types that describe types
(C{wireType} 16 to C{mapType} 23, C{gobEncoderType} 24).

What this module guarantees
===========================

Struct fields are matched B{by name} with the definitions found in the
stream, as Go does: fields the reader does not know are skipped by their
type, and fields the stream does not carry are zero.  Every malformed input
raises L{GobError} with a one-line message: lengths and counts are checked
against the bytes left, nesting is bounded by L{MAX_DEPTH}, type ids must be
defined exactly once, values must fit the receiving type, strings must be
UTF-8, and nothing may follow the value.

L{decode} decodes a stream into Python values (useful to inspect an unknown
stream); L{decodeInstances} reads a Go master's C{map[string]*Instance} into
L{GoInstance} records.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

from attrs import field, frozen

from nodepass.errors import NodePassError

__all__ = [
    "BOOL",
    "BYTES",
    "COMPLEX",
    "FLOAT",
    "INSTANCES",
    "INT",
    "INTERFACE",
    "MAX_DEPTH",
    "STRING",
    "UINT",
    "GoInstance",
    "GoInterface",
    "GoPeer",
    "GobError",
    "MapOf",
    "Scalar",
    "SliceOf",
    "StructOf",
    "Target",
    "decode",
    "decodeInstances",
]

#: Predefined type ids (Go's C{encoding/gob} C{type.go}).
BOOL: Final = 1
INT: Final = 2
UINT: Final = 3
FLOAT: Final = 4
BYTES: Final = 5
STRING: Final = 6
COMPLEX: Final = 7
INTERFACE: Final = 8
_WIRE_TYPE: Final = 16
_ARRAY_TYPE: Final = 17
_COMMON_TYPE: Final = 18
_SLICE_TYPE: Final = 19
_STRUCT_TYPE: Final = 20
_FIELD_TYPE: Final = 21
_FIELD_TYPE_SLICE: Final = 22
_MAP_TYPE: Final = 23
_GOB_ENCODER_TYPE: Final = 24

#: The lowest type id a stream may define.
_FIRST_USER_ID: Final = 64

#: How deeply values may nest (a struct in a map in a struct ... counts one
#: level each).  The Go state file needs 4; type definitions need 4.
MAX_DEPTH: Final = 64

_INT32 = 1 << 31


class GobError(NodePassError, ValueError):
    """
    The bytes are not a gob stream this decoder accepts, or the value does
    not fit the type it is read into.  C{str()} is always one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# -- what the stream describes -----------------------------------------------------------------


@frozen
class _Basic:
    name: str


@frozen
class _Struct:
    name: str
    fields: tuple[tuple[str, int], ...]


@frozen
class _Slice:
    name: str
    elem: int


@frozen
class _Array:
    name: str
    elem: int
    length: int


@frozen
class _Map:
    name: str
    key: int
    elem: int


@frozen
class _Opaque:
    """
    A type with its own binary encoding (C{GobEncoder}, C{BinaryMarshaler},
    C{TextMarshaler}): its values are byte strings.
    """

    name: str


_WireType: TypeAlias = _Basic | _Struct | _Slice | _Array | _Map | _Opaque


# -- what the reader wants ---------------------------------------------------------------------


@frozen
class Scalar:
    """
    A predefined type: C{kind} is its type id (L{BOOL} ... L{INTERFACE}).
    For L{INT} and L{UINT}, C{bits} is the width of the receiving Go type;
    a value outside it is an error, as in Go.
    """

    kind: int
    bits: int = 64


@frozen
class StructOf:
    """
    A struct read as a C{dict} from field name to value, holding only the
    fields listed here that the value carries (omitted fields are zero).
    """

    name: str
    fields: tuple[tuple[str, Target], ...]
    _byName: Mapping[str, Target] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_byName", dict(self.fields))

    def get(self, name: str) -> Target | _Skip:
        return self._byName.get(name, _SKIP)

    def knows(self, name: str) -> bool:
        return name in self._byName


@frozen
class MapOf:
    """
    A map read as a C{dict}; duplicate keys are an error.
    """

    key: Target
    elem: Target


@frozen
class SliceOf:
    """
    A slice read as a C{list}.
    """

    elem: Target


class _Skip:
    """
    Read and check the value, keep nothing.
    """


_SKIP: Final = _Skip()

#: What to read a value into: a description, or C{None} for "whatever the
#: stream says" (structs become C{dict}s of the fields present, slices and
#: arrays C{list}s, maps C{dict}s, interfaces L{GoInterface} or C{None},
#: types with their own encoding C{bytes}).
Target: TypeAlias = Scalar | StructOf | MapOf | SliceOf | None


@frozen
class GoInterface:
    """
    A non-nil interface value read by L{decode}: the registered name of the
    concrete type and the value.
    """

    name: str
    value: Any


# -- the predefined types ----------------------------------------------------------------------

_STRING_T: Final = Scalar(STRING)
_TYPE_ID_T: Final = Scalar(INT, 32)

_BUILTIN: Final[Mapping[int, _WireType]] = {
    BOOL: _Basic("bool"),
    INT: _Basic("int"),
    UINT: _Basic("uint"),
    FLOAT: _Basic("float"),
    BYTES: _Basic("bytes"),
    STRING: _Basic("string"),
    COMPLEX: _Basic("complex"),
    INTERFACE: _Basic("interface"),
    _WIRE_TYPE: _Struct(
        "wireType",
        (
            ("ArrayT", _ARRAY_TYPE),
            ("SliceT", _SLICE_TYPE),
            ("StructT", _STRUCT_TYPE),
            ("MapT", _MAP_TYPE),
            ("GobEncoderT", _GOB_ENCODER_TYPE),
            ("BinaryMarshalerT", _GOB_ENCODER_TYPE),
            ("TextMarshalerT", _GOB_ENCODER_TYPE),
        ),
    ),
    _ARRAY_TYPE: _Struct("arrayType", (("CommonType", _COMMON_TYPE), ("Elem", INT), ("Len", INT))),
    _COMMON_TYPE: _Struct("CommonType", (("Name", STRING), ("Id", INT))),
    _SLICE_TYPE: _Struct("sliceType", (("CommonType", _COMMON_TYPE), ("Elem", INT))),
    _STRUCT_TYPE: _Struct(
        "structType", (("CommonType", _COMMON_TYPE), ("Field", _FIELD_TYPE_SLICE))
    ),
    _FIELD_TYPE: _Struct("fieldType", (("Name", STRING), ("Id", INT))),
    _FIELD_TYPE_SLICE: _Slice("[]*fieldType", _FIELD_TYPE),
    _MAP_TYPE: _Struct("mapType", (("CommonType", _COMMON_TYPE), ("Key", INT), ("Elem", INT))),
    _GOB_ENCODER_TYPE: _Struct("gobEncoderType", (("CommonType", _COMMON_TYPE),)),
}

_COMMON_T: Final = StructOf("CommonType", (("Name", _STRING_T), ("Id", _TYPE_ID_T)))
_OPAQUE_T: Final = StructOf("gobEncoderType", (("CommonType", _COMMON_T),))
_WIRE_T: Final = StructOf(
    "wireType",
    (
        (
            "ArrayT",
            StructOf(
                "arrayType",
                (("CommonType", _COMMON_T), ("Elem", _TYPE_ID_T), ("Len", Scalar(INT))),
            ),
        ),
        ("SliceT", StructOf("sliceType", (("CommonType", _COMMON_T), ("Elem", _TYPE_ID_T)))),
        (
            "StructT",
            StructOf(
                "structType",
                (
                    ("CommonType", _COMMON_T),
                    (
                        "Field",
                        SliceOf(StructOf("fieldType", (("Name", _STRING_T), ("Id", _TYPE_ID_T)))),
                    ),
                ),
            ),
        ),
        (
            "MapT",
            StructOf(
                "mapType",
                (("CommonType", _COMMON_T), ("Key", _TYPE_ID_T), ("Elem", _TYPE_ID_T)),
            ),
        ),
        ("GobEncoderT", _OPAQUE_T),
        ("BinaryMarshalerT", _OPAQUE_T),
        ("TextMarshalerT", _OPAQUE_T),
    ),
)


def _typeRef(value: object, what: str) -> int:
    if not isinstance(value, int) or value <= 0:
        raise GobError(f"{what} refers to the invalid type id {value!r}")
    return value


def _wireTypeFrom(typeId: int, raw: Mapping[str, Any]) -> _WireType:
    """
    Turn a decoded C{wireType} value into a type description, checking it.
    """
    members = [name for name, _ in _WIRE_T.fields if name in raw]
    if len(members) != 1:
        raise GobError(f"the definition of type id {typeId} describes {len(members)} types, not 1")
    member = members[0]
    body: Mapping[str, Any] = raw[member]
    name = body.get("CommonType", {}).get("Name", "")
    what = f"type id {typeId}"
    if member == "ArrayT":
        length = body.get("Len", 0)
        if length < 0:
            raise GobError(f"{what} is an array of negative length {length}")
        return _Array(name, _typeRef(body.get("Elem", 0), what), length)
    if member == "SliceT":
        return _Slice(name, _typeRef(body.get("Elem", 0), what))
    if member == "MapT":
        return _Map(name, _typeRef(body.get("Key", 0), what), _typeRef(body.get("Elem", 0), what))
    if member == "StructT":
        fields: list[tuple[str, int]] = []
        seen: set[str] = set()
        for item in body.get("Field", []):
            fieldName = item.get("Name", "")
            if not fieldName:
                raise GobError(f"{what} has a struct field without a name")
            if fieldName in seen:
                raise GobError(f"{what} has the struct field {fieldName!r} twice")
            seen.add(fieldName)
            fields.append(
                (fieldName, _typeRef(item.get("Id", 0), f"field {fieldName!r} of {what}"))
            )
        return _Struct(name, tuple(fields))
    return _Opaque(name)


# -- the decoder -------------------------------------------------------------------------------


class _Decoder:
    """
    A cursor over the stream.  C{end} is the end of the message being read:
    nothing may be read past it.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.depth = 0
        self.types: dict[int, _WireType] = dict(_BUILTIN)

    def fail(self, reason: str) -> GobError:
        return GobError(f"{reason} at byte {self.pos}")

    # -- primitives ----------------------------------------------------------------------------

    def left(self) -> int:
        return self.end - self.pos

    def readBytes(self, count: int) -> bytes:
        if count > self.left():
            raise self.fail(f"{count} bytes needed, {self.left()} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def readUint(self) -> int:
        if self.pos >= self.end:
            raise self.fail("truncated: an integer is missing")
        first = self.data[self.pos]
        if first < 0x80:
            self.pos += 1
            return first
        size = 256 - first
        if size > 8:
            raise self.fail(f"an unsigned integer of {size} bytes (at most 8)")
        self.pos += 1
        return int.from_bytes(self.readBytes(size), "big")

    def readInt(self) -> int:
        value = self.readUint()
        return ~(value >> 1) if value & 1 else value >> 1

    def readLength(self, what: str) -> int:
        count = self.readUint()
        if count > self.left():
            raise self.fail(f"{what} of length {count} but only {self.left()} bytes left")
        return count

    def readCount(self, what: str, minimum: int) -> int:
        """
        An element count; every element takes at least C{minimum} bytes.
        """
        count = self.readUint()
        if count * minimum > self.left():
            raise self.fail(f"{what} of {count} elements but only {self.left()} bytes left")
        return count

    def readText(self, what: str) -> str:
        raw = self.readBytes(self.readLength(what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def readFloat(self) -> float:
        bits = self.readUint().to_bytes(8, "little")
        value: float = struct.unpack(">d", bits)[0]
        return value

    # -- types ---------------------------------------------------------------------------------

    def wireType(self, typeId: int) -> _WireType:
        wire = self.types.get(typeId)
        if wire is None:
            raise self.fail(f"type id {typeId} is not defined")
        return wire

    def readDefinition(self, typeId: int) -> None:
        """
        Read the definition of C{typeId} (the C{wireType} after C{-typeId}).
        """
        if typeId < _FIRST_USER_ID or typeId >= _INT32:
            raise self.fail(f"a definition of the reserved or invalid type id {typeId}")
        if typeId in self.types:
            raise self.fail(f"type id {typeId} is defined twice")
        raw = self.readValue(_WIRE_TYPE, _WIRE_T)
        self.types[typeId] = _wireTypeFrom(typeId, raw)

    # -- values --------------------------------------------------------------------------------

    def readTopValue(self, typeId: int, target: Target | _Skip) -> Any:
        """
        A value as it stands alone in a message: non-structs after a zero delta.
        """
        if not isinstance(self.wireType(typeId), _Struct):
            if self.readUint() != 0:
                raise self.fail("a non-struct value without its zero field delta")
        return self.readValue(typeId, target)

    def readValue(self, typeId: int, target: Target | _Skip) -> Any:
        wire = self.wireType(typeId)
        if isinstance(wire, _Basic):
            return self.readBasic(typeId, wire, target)
        if self.depth >= MAX_DEPTH:
            raise self.fail(f"values nested more than {MAX_DEPTH} deep")
        self.depth += 1
        try:
            if isinstance(wire, _Struct):
                return self.readStruct(wire, target)
            if isinstance(wire, _Map):
                return self.readMap(wire, target)
            if isinstance(wire, _Slice | _Array):
                return self.readSequence(wire, target)
            return self.readOpaque(wire, target)
        finally:
            self.depth -= 1

    def mismatch(self, wire: str, target: Target) -> GobError:
        return self.fail(f"a {wire} value cannot be read as {_describe(target)}")

    def readBasic(self, typeId: int, wire: _Basic, target: Target | _Skip) -> Any:
        if isinstance(target, Scalar):
            if target.kind != typeId:
                raise self.mismatch(wire.name, target)
        elif target is not None and not isinstance(target, _Skip):
            raise self.mismatch(wire.name, target)
        keep = not isinstance(target, _Skip)
        if typeId == BOOL:
            flag = self.readUint()
            if flag > 1:
                raise self.fail(f"the bool value {flag}")
            return flag == 1
        if typeId in (INT, UINT):
            number = self.readInt() if typeId == INT else self.readUint()
            if isinstance(target, Scalar):
                low, high = (
                    (-(1 << (target.bits - 1)), 1 << (target.bits - 1))
                    if typeId == INT
                    else (0, 1 << target.bits)
                )
                if not low <= number < high:
                    raise self.fail(f"{number} does not fit {_describe(target)}")
            return number
        if typeId == FLOAT:
            return self.readFloat()
        if typeId == COMPLEX:
            return complex(self.readFloat(), self.readFloat())
        if typeId == BYTES:
            return self.readBytes(self.readLength("a byte slice"))
        if typeId == STRING:
            if not keep:
                self.readBytes(self.readLength("a string"))
                return None
            return self.readText("a string")
        return self.readInterface(keep)

    def readInterface(self, keep: bool) -> Any:
        name = self.readText("an interface type name")
        if not name:
            return None
        if self.depth >= MAX_DEPTH:
            raise self.fail(f"values nested more than {MAX_DEPTH} deep")
        self.depth += 1
        try:
            # Definitions needed by the concrete value may come first, each
            # but the first preceded by its byte count (Go's decoder reads
            # and ignores those counts).
            while True:
                typeId = self.readInt()
                if typeId >= 0:
                    break
                self.readDefinition(-typeId)
                if self.pos < self.end:
                    self.readUint()
            size = self.readLength("an interface value")
            outer, self.end = self.end, self.pos + size
            value = self.readTopValue(typeId, None if keep else _SKIP)
            if self.pos != self.end:
                raise self.fail(f"{self.end - self.pos} unread bytes in an interface value")
            self.end = outer
        finally:
            self.depth -= 1
        return GoInterface(name, value) if keep else None

    def readStruct(self, wire: _Struct, target: Target | _Skip) -> Any:
        keep = not isinstance(target, _Skip)
        if isinstance(target, StructOf):
            if wire.fields and not any(target.knows(name) for name, _ in wire.fields):
                raise self.fail(f"struct {wire.name!r} has no field in common with {target.name}")
        elif isinstance(target, Scalar | MapOf | SliceOf):
            raise self.mismatch("struct", target)
        result: dict[str, Any] = {}
        number = -1
        while True:
            delta = self.readUint()
            if delta == 0:
                return result if keep else None
            number += delta
            if number >= len(wire.fields):
                raise self.fail(f"field number {number} of a struct with {len(wire.fields)} fields")
            name, fieldType = wire.fields[number]
            want: Target | _Skip = target.get(name) if isinstance(target, StructOf) else target
            fieldValue = self.readValue(fieldType, want)
            if not isinstance(want, _Skip):
                result[name] = fieldValue

    def readMap(self, wire: _Map, target: Target | _Skip) -> Any:
        if isinstance(target, _Skip):
            keyTarget: Target | _Skip = _SKIP
            elemTarget: Target | _Skip = _SKIP
        elif isinstance(target, MapOf):
            keyTarget, elemTarget = target.key, target.elem
        elif target is None:
            keyTarget = elemTarget = None
        else:
            raise self.mismatch("map", target)
        size = self.readCount("a map", 2)
        result: dict[Any, Any] = {}
        for _ in range(size):
            key = self.readValue(wire.key, keyTarget)
            element = self.readValue(wire.elem, elemTarget)
            if isinstance(keyTarget, _Skip):
                continue
            try:
                duplicate = key in result
            except TypeError:
                raise self.fail("a map key that is not a plain value") from None
            if duplicate:
                raise self.fail(f"the map key {_short(key)} appears twice")
            result[key] = element
        return None if isinstance(keyTarget, _Skip) else result

    def readSequence(self, wire: _Slice | _Array, target: Target | _Skip) -> Any:
        if isinstance(target, SliceOf):
            elemTarget: Target | _Skip = target.elem
        elif target is None or isinstance(target, _Skip):
            elemTarget = target
        else:
            raise self.mismatch("slice" if isinstance(wire, _Slice) else "array", target)
        size = self.readCount("a slice", 1)
        if isinstance(wire, _Array) and size != wire.length:
            raise self.fail(f"an array of {size} elements for a type of length {wire.length}")
        items = [self.readValue(wire.elem, elemTarget) for _ in range(size)]
        return None if isinstance(target, _Skip) else items

    def readOpaque(self, wire: _Opaque, target: Target | _Skip) -> Any:
        if target is not None and not isinstance(target, _Skip):
            raise self.mismatch(f"{wire.name or 'custom-encoded'} (custom encoding)", target)
        return self.readBytes(self.readLength("a custom-encoded value"))

    # -- the stream ----------------------------------------------------------------------------

    def readStream(self, target: Target) -> Any:
        """
        Read type definitions up to one value; nothing may follow it.
        """
        total = len(self.data)
        if not total:
            raise GobError("empty input: no gob value")
        while True:
            self.end = total
            if self.pos >= total:
                raise self.fail("the stream ends before its value")
            size = self.readUint()
            if size == 0:
                raise self.fail("an empty message")
            if size > total - self.pos:
                raise self.fail(f"a message of {size} bytes but only {total - self.pos} left")
            self.end = self.pos + size
            typeId = self.readInt()
            if typeId < 0:
                self.readDefinition(-typeId)
                if self.pos != self.end:
                    raise self.fail(f"{self.end - self.pos} stray bytes after a type definition")
                continue
            if typeId == 0:
                raise self.fail("a value of type id 0")
            value = self.readTopValue(typeId, target)
            if self.pos != self.end:
                raise self.fail(f"{self.end - self.pos} unread bytes at the end of the value")
            if self.end != total:
                raise self.fail(f"{total - self.end} bytes after the value")
            return value


def _describe(target: Target) -> str:
    if isinstance(target, Scalar):
        name = _BUILTIN[target.kind]
        assert isinstance(name, _Basic)
        if target.kind == INT:
            return f"int{target.bits}"
        if target.kind == UINT:
            return f"uint{target.bits}"
        return name.name
    if isinstance(target, StructOf):
        return f"struct {target.name}"
    if isinstance(target, MapOf):
        return "a map"
    if isinstance(target, SliceOf):
        return "a slice"
    return "any value"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode(data: bytes, target: Target = None) -> Any:
    """
    Decode a gob stream holding one value.

    @param data: the whole stream: type definitions, then exactly one value.
    @param target: what to read the value into (L{Scalar}, L{StructOf},
        L{MapOf}, L{SliceOf}); C{None} takes whatever the stream describes.
    @raise GobError: the stream is malformed, holds no value or more than
        one, or the value does not fit C{target}.
    """
    return _Decoder(bytes(data)).readStream(target)


# -- the Go master's state file ----------------------------------------------------------------


@frozen
class GoPeer:
    """
    C{Instance.Meta.Peer} of the Go master.
    """

    sid: str = ""
    type: str = ""
    alias: str = ""


_COUNTERS: Final = ("TCPRX", "TCPTX", "UDPRX", "UDPTX")
_GAUGES: Final = ("Mode", "Ping", "Pool", "TCPS", "UDPS")
_UINT64_T: Final = Scalar(UINT, 64)
_INT32_T: Final = Scalar(INT, 32)


@frozen(kw_only=True)
class GoInstance:
    """
    One record of a Go master's state file (spec §11.1), fields named as in
    Go and zero when the file leaves them out.

    @ivar tags: C{Meta.Tags}; C{None} for a nil map.
    @ivar traffic: C{(TCPRX, TCPTX, UDPRX, UDPTX)}.
    @ivar base: C{(TCPRXBase, TCPTXBase, UDPRXBase, UDPTXBase)}: the totals
        when the child was started.
    @ivar reset: C{(TCPRXReset, ...)}: the child's raw counters at the last
        reset.
    """

    id: str = ""
    alias: str = ""
    type: str = ""
    status: str = ""
    url: str = field(default="", repr=False)
    config: str = field(default="", repr=False)
    restart: bool = False
    peer: GoPeer = GoPeer()
    tags: dict[str, str] | None = None
    mode: int = 0
    ping: int = 0
    pool: int = 0
    tcps: int = 0
    udps: int = 0
    traffic: tuple[int, int, int, int] = (0, 0, 0, 0)
    base: tuple[int, int, int, int] = (0, 0, 0, 0)
    reset: tuple[int, int, int, int] = (0, 0, 0, 0)


_PEER_T: Final = StructOf("Peer", (("SID", _STRING_T), ("Type", _STRING_T), ("Alias", _STRING_T)))
_META_T: Final = StructOf("Meta", (("Peer", _PEER_T), ("Tags", MapOf(_STRING_T, _STRING_T))))
_INSTANCE_T: Final = StructOf(
    "Instance",
    (
        ("ID", _STRING_T),
        ("Alias", _STRING_T),
        ("Type", _STRING_T),
        ("Status", _STRING_T),
        ("URL", _STRING_T),
        ("Config", _STRING_T),
        ("Restart", Scalar(BOOL)),
        ("Meta", _META_T),
        *((name, _INT32_T) for name in _GAUGES),
        *((name, _UINT64_T) for name in _COUNTERS),
        *((name + "Base", _UINT64_T) for name in _COUNTERS),
        *((name + "Reset", _UINT64_T) for name in _COUNTERS),
    ),
)

#: The value a Go master writes: C{map[string]*Instance}.
INSTANCES: Final = MapOf(_STRING_T, _INSTANCE_T)


def _quad(raw: Mapping[str, Any], suffix: str) -> tuple[int, int, int, int]:
    a, b, c, d = (raw.get(name + suffix, 0) for name in _COUNTERS)
    return (a, b, c, d)


def _instanceFrom(raw: Mapping[str, Any]) -> GoInstance:
    meta: Mapping[str, Any] = raw.get("Meta", {})
    peer: Mapping[str, Any] = meta.get("Peer", {})
    return GoInstance(
        id=raw.get("ID", ""),
        alias=raw.get("Alias", ""),
        type=raw.get("Type", ""),
        status=raw.get("Status", ""),
        url=raw.get("URL", ""),
        config=raw.get("Config", ""),
        restart=raw.get("Restart", False),
        peer=GoPeer(peer.get("SID", ""), peer.get("Type", ""), peer.get("Alias", "")),
        tags=meta.get("Tags"),
        mode=raw.get("Mode", 0),
        ping=raw.get("Ping", 0),
        pool=raw.get("Pool", 0),
        tcps=raw.get("TCPS", 0),
        udps=raw.get("UDPS", 0),
        traffic=_quad(raw, ""),
        base=_quad(raw, "Base"),
        reset=_quad(raw, "Reset"),
    )


def decodeInstances(data: bytes) -> dict[str, GoInstance]:
    """
    Decode a Go master's state file: a C{map[string]*Instance} keyed by
    instance id, the API key pseudo-instance included.

    @raise GobError: the file is not such a gob stream.
    """
    records: dict[str, Mapping[str, Any]] = decode(data, INSTANCES)
    return {key: _instanceFrom(raw) for key, raw in records.items()}
