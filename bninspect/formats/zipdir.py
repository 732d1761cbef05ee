"""The central directory of a plain zip archive, read fast; zipfile stays the reader for all others.

zipfile builds a ZipInfo in Python for every member: 300 ms for the 60,006 members of a
10,000-layer checkpoint. torch (miniz) writes the plainest archives: stored members, ASCII
or UTF-8 names, no extra fields, no comment, a zip64 end record. For exactly those,
``directory`` reads the members with one struct call each, in a third of the time.

It is a security boundary, so it accepts nothing zipfile would read differently. Outside
that profile (prepended data, a comment, extra fields, compression, encryption, names
zipfile would alter or that repeat, a directory that does not add up) it returns None and
the caller opens the archive with zipfile, which reports any damage as it always did.
Where it accepts, its members are zipfile's, field for field (``zipfile._EndRecData``,
``_EndRecData64`` and ``_RealGetContents`` of Python 3.11 followed step by step); ``read``
checks a member as ``ZipFile.read`` does (local header magic, its name, size, CRC-32) and
raises zipfile's exceptions, so callers handle both readers alike.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple
from zipfile import MAX_EXTRACT_VERSION, ZIP_STORED, BadZipFile

# zipfile's structEndArchive, structEndArchive64Locator, structEndArchive64, structCentralDir, structFileHeader.
_END = struct.Struct("<4s4H2LH")
_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_TAIL = _END64.size + _LOCATOR.size + _END.size

# Flag bits zipfile refuses or decrypts for: encrypted, compressed patched data, strong encryption.
_UNREADABLE = 1 << 0 | 1 << 5 | 1 << 6
_UTF8_NAME = 1 << 11


class Member(NamedTuple):
    """What the readers use of a ZipInfo, under ZipInfo's names."""

    filename: str
    header_offset: int
    file_size: int
    CRC: int
    compress_type: int = ZIP_STORED


def directory(fd: int, size: int) -> dict[str, Member] | None:
    """The archive's members by name, in directory order, or None where zipfile must read it."""
    end = _end_records(fd, size)
    if end is None:
        return None
    count, cd_size, cd_offset = end
    return _members(os.pread(fd, cd_size, cd_offset), count)


def _end_records(fd: int, size: int) -> tuple[int, int, int] | None:
    """(members, directory size, directory offset) from the end records, read as zipfile reads them.

    Only an end record with no comment, at the very end, and a directory that ends where the
    end records begin (zipfile would allow data before the archive: its offsets then shift).
    """
    if size < _END.size:
        return None
    tail = os.pread(fd, min(size, _TAIL), size - min(size, _TAIL))
    sig, _disk, _disk_cd, _here, count, cd_size, cd_offset, comment = _END.unpack_from(tail, len(tail) - _END.size)
    if sig != b"PK\x05\x06" or comment:
        return None
    ends_at = size - _END.size
    if len(tail) >= _END.size + _LOCATOR.size:
        sig, disk, _offset, disks = _LOCATOR.unpack_from(tail, len(tail) - _END.size - _LOCATOR.size)
        if sig == b"PK\x06\x07":
            if disk != 0 or disks > 1 or len(tail) < _TAIL:
                return None
            record = _END64.unpack_from(tail)
            if record[0] != b"PK\x06\x06":
                return None
            count, cd_size, cd_offset = record[7:10]
            ends_at -= _LOCATOR.size + _END64.size
    if cd_offset + cd_size != ends_at:
        return None
    return count, cd_size, cd_offset


def _members(cd: bytes, count: int) -> dict[str, Member] | None:
    """``count`` central directory records filling ``cd`` exactly, each one plain, or None."""
    members: dict[str, Member] = {}
    # tuple.__new__ as namedtuple's _make uses it: half the cost of Member(...) for 60,000 members.
    unpack, new, pos = _CENTRAL.unpack_from, tuple.__new__, 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(cd):
            return None
        (sig, _cv, _cs, extract_version, _res, flags, method, _t, _d, crc, compressed, size,
         name_len, extra_len, comment_len, _disk, _ia, _ea, offset) = unpack(cd, pos)
        if (sig != b"PK\x01\x02" or extra_len or flags & _UNREADABLE or method != ZIP_STORED
                or compressed != size or extract_version > MAX_EXTRACT_VERSION):
            return None
        start = pos + _CENTRAL.size
        pos = start + name_len + comment_len
        name = _name(cd[start:start + name_len], flags)
        if name is None or name in members:
            return None
        members[name] = new(Member, (name, offset, size, crc, ZIP_STORED))
    return members if pos == len(cd) else None


def _name(raw: bytes, flags: int) -> str | None:
    """The name as zipfile decodes it, or None where zipfile would change it (NUL, os.sep) or fail."""
    try:
        name = raw.decode("utf-8" if flags & _UTF8_NAME else "cp437")
    except UnicodeDecodeError:
        return None
    if "\0" in name or (os.sep != "/" and os.sep in name):
        return None
    return name


LOCAL_HEADER_SIZE = _LOCAL.size


def local_header(raw: bytes) -> tuple[int, int, int] | None:
    """(flags, name length, extra length) from a local file header's fixed part, or None if
    ``raw`` is not one. A member's data starts LOCAL_HEADER_SIZE + both lengths past it."""
    sig, _v, _s, flags, *_rest, name_len, extra_len = _LOCAL.unpack(raw)
    return (flags, name_len, extra_len) if sig == b"PK\x03\x04" else None


def read(fd: int, size: int, member: Member) -> bytes:
    """A member's bytes, checked as ``ZipFile.read`` checks them; BadZipFile or EOFError if damaged."""
    header = os.pread(fd, _LOCAL.size, member.header_offset)
    if len(header) != _LOCAL.size:
        raise BadZipFile("Truncated file header")
    fields = local_header(header)
    if fields is None:
        raise BadZipFile("Bad magic number for file header")
    flags, name_len, extra_len = fields
    raw = os.pread(fd, name_len, member.header_offset + _LOCAL.size)
    if raw.decode("utf-8" if flags & _UTF8_NAME else "cp437") != member.filename:
        raise BadZipFile(f"File name in directory {member.filename!r} and header {raw!r} differ.")
    start = member.header_offset + _LOCAL.size + name_len + extra_len
    if start + member.file_size > size:  # before reading: the size comes from the archive
        raise EOFError
    data = os.pread(fd, member.file_size, start)
    if len(data) != member.file_size:
        raise EOFError
    if zlib.crc32(data) != member.CRC:
        raise BadZipFile(f"Bad CRC-32 for file {member.filename!r}")
    return data
