"""Who is answering: the name stored with a person's answers when none is given."""

from __future__ import annotations

import getpass
import os


def default_annotator() -> str:
    """The login name, or $USER, or 'annotator' (some containers have no login name)."""
    try:
        return getpass.getuser()
    except Exception:  # getpass raises OSError/KeyError where no user entry exists
        return os.environ.get("USER") or "annotator"
