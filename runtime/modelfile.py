"""Checks on an ONNX file from somewhere else, before any backend opens it.

An ONNX model can keep its weights in *external data* files named by a
relative ``location``. A hostile or careless model can name ``../../etc/...``,
an absolute path, or a symlink that leads out of the model's folder, and make
the runtime read (and, through its outputs, leak) any file the process can
read. Recent onnx and onnxruntime releases refuse ``..`` and absolute paths
with a low-level message; older ones (still on Jetsons) do not, and none of
them looks through symlinks. So this is checked here, without the ``onnx``
package (the runtime needs only numpy and onnxruntime): every external-data
entry is a ``StringStringEntryProto`` whose key ``location`` has one fixed
wire encoding, which is searched for in the file's bytes.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

from .errors import RuntimeInputError

NAME_MAX = 255  # bytes in one path component (Linux, macOS; ext4, XFS, APFS)
PATH_MAX = 4096  # bytes in a whole path (Linux)
SHORTER = "give a shorter path (or move the files to a folder nearer the root)"


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(raw):,} bytes)"


def path_problem(path) -> str | None:
    """Why the operating system cannot name ``path`` (None: it can). Python 3.11's ``Path.exists()`` raises
    ENAMETOOLONG instead of answering False, so every command checks its paths with this first."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        return f"{_shown(raw.replace(bytes(1), b'?'))} contains a NUL byte, which no file name can hold; remove it"
    if len(raw) >= PATH_MAX:
        return (f"{_shown(raw)} is {len(raw):,} bytes long, over the {PATH_MAX:,}-byte limit of a path, so it cannot be "
                f"opened or created; {SHORTER}")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return (f"{_shown(raw)} has a name of {len(longest):,} bytes ({_shown(longest[:40])}...), over the "
                f"{NAME_MAX}-byte limit of one file or folder name, so it cannot be opened or created; {SHORTER}")
    return None


def check_path(path, what: str = "path") -> Path:
    """``path`` as a Path, or :class:`RuntimeInputError` in one paragraph when the OS cannot name it."""
    problem = path_problem(path)
    if problem:
        raise RuntimeInputError(f"The {what} {problem}.")
    return Path(path)


#: protobuf bytes of ``key: "location"`` (field 1, length 8) followed by the tag of ``value`` (field 2)
_LOCATION_ENTRY = b"\x0a\x08location\x12"


def _varint(buf, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise RuntimeInputError("malformed varint")


def external_locations(path: Path) -> list[str]:
    """The external-data ``location`` strings an ONNX file names (empty for a self-contained file)."""
    out = []
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return out
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos = buf.find(_LOCATION_ENTRY)
            while pos != -1:
                try:
                    length, start = _varint(buf, pos + len(_LOCATION_ENTRY))
                except RuntimeInputError:
                    break
                out.append(bytes(buf[start : start + length]).decode("utf-8", errors="replace"))
                pos = buf.find(_LOCATION_ENTRY, start + length)
    return out


def check_onnx_file(path) -> Path:
    """Refuse a path that is not a readable, non-empty file, or whose external data leaves its folder."""
    path = check_path(path, "ONNX model path")
    if not path.exists():
        raise RuntimeInputError(f"ONNX model {path} does not exist.")
    if not path.is_file():
        raise RuntimeInputError(f"ONNX model {path} is not a file.")
    try:
        size = path.stat().st_size
        locations = external_locations(path)
    except PermissionError:
        raise RuntimeInputError(f"ONNX model {path} cannot be read (permission denied).") from None
    if size == 0:
        raise RuntimeInputError(f"ONNX model {path} is empty (0 bytes); it was truncated or never written.")
    folder = path.resolve().parent
    for loc in dict.fromkeys(locations):
        target = (folder / loc).resolve()
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            why = "is an absolute path"
        elif not target.is_relative_to(folder):
            why = f"resolves to {target}, outside {folder}"
        else:
            continue
        raise RuntimeInputError(
            f"ONNX model {path} was refused: its external data location '{loc}' {why}. A model may keep weights "
            "only in files inside its own folder (no '..', absolute paths or symlinks leading out), so that opening "
            "it cannot read other files on this machine. Re-save it with onnx.save_model(..., "
            "save_as_external_data=True, location='<name>.data') next to the model.")
    return path
