"""The one error type a user can cause: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input (file, key, value). The message names it and says what was expected."""

    exit_code = 2
