"""Errors the user can act on.

Every exception derived from :class:`UserError` carries a complete, specific message
(which file, which line, what to do). The CLI prints it as one line instead of a
traceback and exits with status 2.
"""


class UserError(Exception):
    """Bad input or environment; the message alone tells the user what to fix."""
