"""Reads the running kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets and
enum values, so that programs compiled against other headers read the right bytes.

bcc compiles with whatever headers are installed (here Debian's 6.1 on a 6.18 kernel);
struct layouts and enum numbers differ between them, so anything beyond UAPI is
taken from the kernel itself at run time. Only the parts of the BTF format needed
for that are decoded: types are indexed once, names resolved on demand.

A loaded BTF holds the whole of the kernel's (~5 MB) and an index of its ~125k
types (~11 MiB of Python objects in all): it is for start-up, so `vmlinux()` loads
a new one each call and callers drop it once they have what they need.
"""
from __future__ import annotations

import struct
from array import array

VMLINUX = "/sys/kernel/btf/vmlinux"

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes of kind-specific data after the 12-byte common header: fixed, or per vlen item.
_FIXED = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_ITEM = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
             KIND_DATASEC: 12, KIND_ENUM64: 12}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(RuntimeError):
    pass


class BTF:
    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF data too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != 0xEB9F:
            raise BTFError(f"not little-endian BTF (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._types = hdr_len + type_off
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # Offset of each type's header, by type id (id 0 is void).
        self._offsets = array("I", [0])
        self._by_name: dict[tuple[int, str], int] = {}
        pos, end = self._types, self._types + type_len
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, _size = unpack("<III", data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            self._offsets.append(pos)
            if name_off and kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_TYPEDEF):
                self._by_name.setdefault((kind, self._str(name_off)), len(self._offsets) - 1)
            pos += 12 + _FIXED.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen

    @classmethod
    def load(cls, path: str = VMLINUX) -> "BTF":
        with open(path, "rb") as f:
            return cls(f.read())

    def _str(self, off: int) -> str:
        start = self._strs + off
        end = self._data.index(b"\0", start, self._str_end)
        return self._data[start:end].decode()

    def _header(self, type_id: int) -> tuple[int, int, int, int, int]:
        pos = self._offsets[type_id]
        name_off, info, size = struct.unpack_from("<III", self._data, pos)
        return pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF, size

    def find(self, kind: int, name: str) -> int:
        tid = self._by_name.get((kind, name))
        if tid is None:
            raise BTFError(f"type {name!r} (kind {kind}) not in BTF")
        return tid

    def resolve(self, type_id: int) -> int:
        """Follows typedefs and qualifiers to the underlying type."""
        while True:
            _, _, kind, _, ref = self._header(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref

    def size(self, type_id: int) -> int:
        _, _, kind, _, size = self._header(self.resolve(type_id))
        if kind == KIND_PTR:
            return 8
        return size

    def members(self, type_id: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct or union's members."""
        pos, _, kind, vlen, _ = self._header(self.resolve(type_id))
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError(f"type {type_id} is not a struct or union")
        kflag = struct.unpack_from("<I", self._data, pos + 4)[0] >> 31
        out = []
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
            bits = off >> 24 if kflag else 0
            bit_off = off & 0xFFFFFF if kflag else off
            out.append((self._str(name_off) if name_off else "", mtype, bit_off, bits))
        return out

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of `a.b.c` inside struct `struct_name`, through anonymous members."""
        tid = self.find(KIND_STRUCT, struct_name)
        total = 0
        for part in path.split("."):
            found = self._find_member(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path!r}")
            bit_off, tid = found
            if bit_off % 8:
                raise BTFError(f"{struct_name}.{path} is a bit field")
            total += bit_off // 8
        return total

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        for mname, mtype, bit_off, _ in self.members(type_id):
            if mname == name:
                return bit_off, mtype
            if not mname:  # anonymous struct/union: look inside
                inner = self.resolve(mtype)
                _, _, kind, _, _ = self._header(inner)
                if kind in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return bit_off + found[0], found[1]
        return None

    def member_size(self, struct_name: str, path: str) -> int:
        tid = self.find(KIND_STRUCT, struct_name)
        for part in path.split("."):
            found = self._find_member(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path!r}")
            tid = found[1]
        return self.size(tid)

    def enum(self, name: str) -> dict[str, int]:
        """Names and values of an enum (or enum64)."""
        tid = self._by_name.get((KIND_ENUM, name)) or self._by_name.get((KIND_ENUM64, name))
        if tid is None:
            raise BTFError(f"enum {name!r} not in BTF")
        pos, _, kind, vlen, _ = self._header(tid)
        out = {}
        if kind == KIND_ENUM:
            for i in range(vlen):
                name_off, val = struct.unpack_from("<Ii", self._data, pos + 12 + 8 * i)
                out[self._str(name_off)] = val
        else:
            for i in range(vlen):
                name_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
                out[self._str(name_off)] = (hi << 32) | lo
        return out


def vmlinux() -> BTF:
    """The running kernel's BTF, loaded anew (not kept: see the module's note)."""
    return BTF.load(VMLINUX)
