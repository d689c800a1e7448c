"""The one exception type a user should ever see: a clear, one-line message."""


class KdnasError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


#: Where a first line is cut: transformers' "Unrecognized model" line lists some 400 model types.
MAX_LINE = 300


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), at most `MAX_LINE` characters:
    for one-line errors."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3].rstrip(" ,") + "..."
