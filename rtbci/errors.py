"""User-facing errors: one line that names the field, file or stream at fault."""


class RtbciError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as a single line (no traceback) and exits with status 2.
    """


class WorkerFault(Exception):
    """The window's error, as the worker process said it (an exception in the decoder), or
    beginning with ``SUPERVISOR_SAID`` (it died, was killed, is restarting or failed: logged
    by the supervisor once, not again per window); counted on that window as is."""


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: boom"``; the type alone when there is no message (``KeyboardInterrupt``);
    a worker process's fault as it says it."""
    text = str(exc)
    if isinstance(exc, WorkerFault):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
