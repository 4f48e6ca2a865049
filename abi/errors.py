"""Errors that reach the user as one line, never as a traceback."""


class VmbootError(Exception):
    """A failure the user can act on. ``str(err)`` is the whole message."""

    exit_status = 1


class UsageError(VmbootError):
    """The command line was wrong."""

    exit_status = 2
