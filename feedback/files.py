"""Writing files so that a reader never sees half of one: write a temporary file beside the
target, flush it to disk, then rename it over the target (atomic on POSIX and Windows).

One writer for the whole project (run metadata, manifests, exports, GIFs, checkpoint
configs); it lives here because the store package imports nothing of ours and every other
package may import it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path`` and rename it into place.

    On any error the temporary file is removed and the target is left as it was; the
    error is raised again (callers turn an OSError into a message for the user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes | Iterable[bytes]) -> Path:
    """Write bytes (or an iterable of byte chunks) atomically."""
    chunks = [data] if isinstance(data, bytes | bytearray) else data

    def write(fh: BinaryIO) -> None:
        for chunk in chunks:
            fh.write(chunk)

    return write_atomic(path, write)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = str) -> Path:
    """Write ``obj`` as strict JSON (UTF-8, a final newline) atomically: NaN and infinities,
    which strict parsers refuse, are written as null."""
    text = json.dumps(strict_json(obj), indent=indent, default=default, allow_nan=False)
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy's) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return strict_json(obj.item())
    return obj
