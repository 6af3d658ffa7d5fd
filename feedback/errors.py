"""Errors a user can fix: the CLI prints the message (file, line, field, how to fix) and exits 2."""

from collections.abc import Callable


class UserInputError(ValueError):
    """Bad input from a user: the message names the file, line and field and says how to fix it."""


def exit_code(run: Callable[..., int], *args: object, interrupted: str = "interrupted") -> int:
    """Call ``run(*args)`` as a command: its return code, or 2 with the message of a
    UserInputError (no traceback), or 130 with ``interrupted`` after Ctrl-C."""
    import sys

    try:
        return int(run(*args))
    except UserInputError as exc:
        print(f"rlhf-hgt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhf-hgt: {interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is silent
        return 141
