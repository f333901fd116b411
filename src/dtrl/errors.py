"""User-facing errors: the CLI prints ``dtrl: error: <message>`` on one line and exits non-zero."""


class DtrlError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class NothingToDo(Exception):  # noqa: N818 (not an error: the CLI prints it and exits 0)
    """The command has nothing left to do (``--resume`` of a finished run that asks for no more
    iterations): the CLI prints the message and exits 0, and nothing on disk has changed."""
