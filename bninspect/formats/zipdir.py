"""Zip archives, bounded: the central directory of a plain archive read fast, and every member's
bytes read through ``MemberReader``, whoever listed the archive.

zipfile builds a ZipInfo in Python for every member: 300 ms for the 60,006 members of a
10,000-layer checkpoint. torch (miniz) writes the plainest archives: stored members, ASCII
or UTF-8 names, no extra fields, no comment, a zip64 end record. For exactly those,
``directory`` reads the members with one struct call each, in a third of the time.

It is a security boundary, so it accepts nothing zipfile would read differently. Outside
that profile (prepended data, a comment, extra fields, compression, encryption, names
zipfile would alter or that repeat, a directory that does not add up) it returns None and
the caller lists the archive with zipfile, which reports any damage in its directory.
Where it accepts, its members are zipfile's, field for field (``zipfile._EndRecData``,
``_EndRecData64`` and ``_RealGetContents`` of Python 3.11 followed step by step).

Reading a member is ours whoever listed it (zipfile lists the archives ``directory`` declines):
zipfile's ``read`` inflates a whole compressed chunk before it looks at the size the directory
states, so a 2.8 KB bzip2 member claiming a few bytes became 5.2 GB in memory. ``MemberReader``
reads stored members with ``pread`` and inflates deflated ones incrementally, never past the size
the directory states (a member that inflates further is refused) nor past a budget per file;
methods torch never writes (bzip2, LZMA, ...) are refused by name. A local header that disagrees
with the central directory (another name, another method) is refused too: two readers could read
two different archives from such a file.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any, NamedTuple
from zipfile import MAX_EXTRACT_VERSION, ZIP_DEFLATED, ZIP_STORED

from bninspect.errors import InvalidFileError
from bninspect.formats.paths import SharedFile

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
    compress_size: int = 0
    flag_bits: int = 0


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
        members[name] = new(Member, (name, offset, size, crc, ZIP_STORED, size, flags))
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


# Methods zipfile knows of, by number (APPNOTE.TXT 4.4.5), for the refusal; torch writes only 0 (stored).
_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "Deflate64", 12: "bzip2", 14: "LZMA", 93: "Zstandard", 95: "xz",
                 98: "PPMd", 99: "AE-x encryption"}
_CHUNK = 1 << 20  # compressed bytes handed to zlib at a time

# Bytes of one file bninspect inflates, over all its deflated members. torch writes every member
# stored; a re-zipped (deflated) checkpoint is legitimate, and `show` reads only its BatchNorm
# tensors, but deflate inflates up to 1032x, so a 392 KB member could claim 96 million channels.
MAX_INFLATED_BYTES = 256 << 20


class MemberReader:
    """Reads the members of one archive through its descriptor, each checked against its directory entry."""

    def __init__(self, file: SharedFile, size: int) -> None:
        self.file = file
        self.size = size

    def _fail(self, member: Any, problem: str) -> InvalidFileError:
        return InvalidFileError(f"zip member {member.filename}: {problem}", path=self.file.path)

    def data_offset(self, member: Any) -> int:
        """Where ``member``'s data starts, after checking that its local header agrees with the
        central directory (signature, name, method, no encryption)."""
        name = member.filename
        expected = len(name.encode("utf-8"))
        if not 0 <= member.header_offset < self.size:
            # zipfile shifts every offset by where the directory is against where the end record
            # says it is: a lying end record puts local headers before the start of the file.
            raise self._fail(member, f"its local header offset {member.header_offset} lies outside the file "
                                     "(corrupt archive)")
        header = os.pread(self.file.fd, _LOCAL.size + expected, member.header_offset)
        if len(header) < _LOCAL.size:
            raise self._fail(member, "its local header lies past the end of the file (truncated archive)")
        sig, _v, _r, flags, method, *_rest, name_len, extra_len = _LOCAL.unpack_from(header)
        if sig != b"PK\x03\x04":
            raise self._fail(member, "no local header where the central directory says it starts (corrupt archive)")
        raw = header[_LOCAL.size:_LOCAL.size + name_len] if name_len == expected else (
            os.pread(self.file.fd, name_len, member.header_offset + _LOCAL.size))
        try:
            local_name = raw.decode("utf-8" if flags & _UTF8_NAME else "cp437")
        except UnicodeDecodeError:
            local_name = None
        if local_name != name:
            shown = raw[:80].decode("utf-8", "backslashreplace")
            raise self._fail(member, f"its local header names it '{shown}': the archive's two directories disagree, "
                                     "so other readers may see other files (refused)")
        if method != member.compress_type:
            raise self._fail(member, f"its local header says compression method {method}, the central directory "
                                     f"{member.compress_type}: the archive's two directories disagree (refused)")
        if (flags | member.flag_bits) & _UNREADABLE:
            raise self._fail(member, "it is encrypted; bninspect reads only plain archives")
        return member.header_offset + _LOCAL.size + name_len + extra_len

    def read(self, member: Any, start: int = 0, length: int | None = None, *, data_offset: int | None = None,
             crc: bool = False) -> bytes:
        """``length`` bytes (default: to the end) from ``start`` of ``member``'s content, stored or
        inflated; ``crc`` also checks the CRC-32 of a whole member. ``data_offset`` is a cached
        ``data_offset(member)``."""
        total = member.file_size
        if length is None:
            length = total - start
        if start < 0 or length < 0 or start + length > total:
            raise self._fail(member, f"bytes {start}..{start + length} asked for; it holds {total}")
        offset = self.data_offset(member) if data_offset is None else data_offset
        method = member.compress_type
        if method == ZIP_STORED:
            if member.compress_size != total:
                raise self._fail(member, f"stored, yet its directory entry gives {member.compress_size} bytes stored "
                                         f"and {total} of content")
            if offset + total > self.size:
                raise self._fail(member, f"its {total} bytes run past the end of the file (truncated archive)")
            data = self.file.pread(length, offset + start, f"zip member {member.filename}")
        elif method == ZIP_DEFLATED:
            data = self._inflate(member, offset, start + length)[start:]
        else:
            kind = _METHOD_NAMES.get(method, f"number {method}")
            raise self._fail(member, f"compressed with method {kind}, which torch never writes; bninspect reads "
                                     "stored and deflated members only")
        if crc and length == total and zlib.crc32(data) != member.CRC:
            raise self._fail(member, "fails its CRC check (the bytes were altered or damaged)")
        return data

    def _inflate(self, member: Any, offset: int, want: int) -> bytes:
        """The first ``want`` bytes of a deflated member, inflated a chunk at a time: never more
        than it states it holds, and within the file's inflation budget."""
        end = offset + member.compress_size
        if end > self.size:
            raise self._fail(member, "its compressed bytes run past the end of the file (truncated archive)")
        if not self.file.budget.charge("inflated", want, MAX_INFLATED_BYTES):
            raise self._fail(member, f"inflating it would take this file past {MAX_INFLATED_BYTES >> 20} MiB of "
                                     "decompressed data, the most bninspect inflates per file (torch stores members "
                                     "uncompressed; re-save the checkpoint with torch.save)")
        # One byte past the stated size, when all of it is asked for: a member that inflates further lies.
        limit = want + 1 if want == member.file_size else want
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        out = bytearray()
        pos = offset
        try:
            while len(out) < limit and not inflater.eof:
                chunk = inflater.unconsumed_tail
                if not chunk:
                    if pos >= end:
                        break
                    chunk = self.file.pread(min(_CHUNK, end - pos), pos, f"zip member {member.filename}")
                    pos += len(chunk)
                out += inflater.decompress(chunk, limit - len(out))
        except zlib.error:
            raise self._fail(member, "its deflated data is corrupt") from None
        if len(out) > member.file_size:
            raise self._fail(member, f"inflates to more than the {member.file_size} bytes its directory entry states "
                                     "(refused)")
        if len(out) < want:
            raise self._fail(member, f"inflates to {len(out)} bytes; its directory entry states {member.file_size} "
                                     "(truncated or corrupt)")
        return bytes(out)

    def check(self, member: Any) -> None:
        """Read all of ``member`` (a chunk at a time where it is stored) and check its CRC-32."""
        if member.compress_type != ZIP_STORED:
            self.read(member, crc=True)
            return
        offset = self.data_offset(member)
        self.read(member, 0, 0, data_offset=offset)  # the size checks
        crc = 0
        for at in range(0, member.file_size, _CHUNK):
            crc = zlib.crc32(self.file.pread(min(_CHUNK, member.file_size - at), offset + at, "a zip member"), crc)
        if crc != member.CRC:
            raise self._fail(member, "fails its CRC check (the bytes were altered or damaged)")
