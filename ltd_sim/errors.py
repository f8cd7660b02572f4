"""The toolkit's user-facing error: one clear line, raised before anything is written."""


class LTDError(Exception):
    """Bad input or a bad artifact. The CLI prints its message as one line and exits with status 2."""
