"""The one exception type a user should ever see: a clear, one-line message."""


class KdnasError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
