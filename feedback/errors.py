"""Errors a user can fix: the CLI prints the message (file, line, field, how to fix) and exits 2."""


class UserInputError(ValueError):
    """Bad input from a user: the message names the file, line and field and says how to fix it."""
