"""User-facing errors: one line that names the field, file or stream at fault."""


class RtbciError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as a single line (no traceback) and exits with status 2.
    """
