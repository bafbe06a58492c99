"""Small helpers shared by the emulator's modules."""

import json
import os
import re
import socket
import tempfile


def write_file_atomic(path, data, mode=0o644):
    """Writes `data` (bytes) to `path` via a temporary file and rename, so
    readers (mosquitto's plugin, the API) never see a half-written file."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path, obj, mode=0o644):
    write_file_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def safe_name(name, limit=100):
    """`name` reduced to characters that are safe in a file name (thing names
    contain ':', file names from devices may contain anything)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:limit].lstrip(".")
    return cleaned or "_"


def tail(path, lines=40):
    """The last lines of a text file, or a note that it is missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:])
