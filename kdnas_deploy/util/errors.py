"""The one exception type a user should ever see: a clear, one-line message."""


class KdnasError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
