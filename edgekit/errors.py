"""The user-facing failures: one plain sentence each, mapped to exit codes by the CLI."""


class EdgekitError(Exception):
    """Bad input or a step that cannot proceed: what was wrong, where, and what to do (exit 2)."""

    exit_code = 2


class RuntimeFailure(EdgekitError):
    """A runtime cannot load or run a model here: its library, the device, the model file or an
    option (exit 2; a bench worker makes it a failed row)."""


class VerificationError(EdgekitError):
    """A produced model does not match its parent within tolerance (exit 1: a quality failure)."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for folding a library error into our sentence."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = text.splitlines()
    # TorchScript puts the cause last, after its own traceback: "RuntimeError: Given groups=1, ..."
    line = lines[-1] if lines[0].startswith("The following operation failed in the TorchScript") else lines[0]
    return line[:limit]
