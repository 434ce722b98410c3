"""The base class of errors a user can act on: the CLI prints their message, without a traceback.

Each subclass's message says what happened and what to change (a field, a file and row, a checkpoint).
"""


class DapoError(Exception):
    """An error caused by input, config or state the user controls, not by a bug in dapo."""
