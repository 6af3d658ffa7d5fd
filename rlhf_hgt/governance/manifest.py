"""The run manifest: what was run, on what, with which code and data.

Written beside metrics.json in every run directory: the config, seeds, package versions,
the git revision, and sha256 hashes of the data (the preference store) and of every
checkpoint file, so a run can be traced and repeated.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlhf_hgt.feedback.files import write_json_atomic

PACKAGES = ("rlhf-hgt", "torch", "numpy", "gymnasium", "stable-baselines3", "transformers",
            "trl", "peft", "accelerate", "datasets")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_sha256(path: Path) -> str:
    """A data file's sha256; a store's is of its content as SQLite reads it (hashing its
    bytes with open() would break this process's locks on it: feedback.sqlite_files)."""
    from rlhf_hgt.feedback.sqlite_files import is_sqlite, sqlite_sha256

    return sqlite_sha256(path) if is_sqlite(path) else file_sha256(path)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def write_manifest(out: Path, config: dict[str, Any], data_files: dict[str, Path],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write RUN_DIR/manifest.json; checkpoints are every file under RUN_DIR/checkpoints and
    every *.safetensors file in RUN_DIR."""
    from rlhf_hgt.feedback.db import is_url, mask_secrets, mask_url

    out = Path(out)
    ckpts = sorted({*out.glob("checkpoints/**/*"), *out.glob("*.safetensors")})
    manifest = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": mask_secrets(sys.argv),  # a store URL's password never lands here
        "config": mask_secrets(config),
        "seed": config.get("seed"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "packages": package_versions(),
        "git": git_revision(),
        "data": {name: {"path": str(p), "sha256": data_sha256(Path(p))}
                 for name, p in data_files.items() if not is_url(p) and Path(p).exists()}
        | {name: {"path": mask_url(str(p)), "sha256": None}  # a team store: no file to hash
           for name, p in data_files.items() if is_url(p)},
        "checkpoints": {str(p.relative_to(out)): file_sha256(p) for p in ckpts if p.is_file()},
        **(extra or {}),
    }
    return write_json_atomic(out / "manifest.json", manifest)
