"""Watching a child process the tests started."""

from __future__ import annotations

import os
import select
import subprocess


def peek_stderr(proc: subprocess.Popen) -> str:
    """What the process wrote on stderr so far (non-blocking; kept on the process, so
    ``peek_stderr(proc) + proc.communicate()[1]`` is all of it)."""
    out = getattr(proc, "_seen", "")
    while select.select([proc.stderr], [], [], 0)[0]:
        chunk = os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
        if not chunk:
            break
        out += chunk
    proc._seen = out  # type: ignore[attr-defined]
    return out
