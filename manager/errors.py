"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class MgrError(Exception):
    """A user-facing error: bad input, missing data, a refused operation.

    Anything raised as ``MgrError`` is printed as ``error: <message>`` with exit code 1;
    any other exception is a bug and keeps its traceback.
    """
