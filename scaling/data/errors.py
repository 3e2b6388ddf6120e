"""The data tier's one error type, in a module of its own so that every data module can raise it
without importing the sources."""


class DataError(Exception):
    """A user-facing data problem; the message is one line naming the path or setting at fault."""
