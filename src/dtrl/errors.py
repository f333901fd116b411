"""User-facing errors: the CLI prints ``dtrl: error: <message>`` on one line and exits non-zero."""


class DtrlError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
