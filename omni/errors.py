"""The one error type for what the user can fix, and how entry points report it.

A `UserError` is bad input: a file (missing, corrupt, of the wrong kind), a config key, a flag, a data row.
Its message names the file or key to fix, and entry points print it as one line, `error: <message>`, exit
status 1. Any other exception is a bug in the code (a shape mismatch, a failed assertion) and keeps its
traceback.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        with exit_on_user_error():
            run(args)
"""
from __future__ import annotations

import contextlib
import sys


class UserError(ValueError):
    """Bad input the user can fix; the message names the file, key, flag or row. A ValueError, so what caught
    ValueError before these errors had a type of their own still catches them."""


class ArtifactError(UserError, RuntimeError):
    """A checkpoint, artifact or export file that is there but cannot be used: unreadable, of another kind or
    format, weights that do not fit its stored config, parts that do not fit each other. Also a RuntimeError,
    which the unreadable-file and weight-mismatch errors were before."""


# A missing input path is the user's too: open() and the loaders raise FileNotFoundError naming it.
USER_ERRORS = (UserError, FileNotFoundError)


def one_line(e: BaseException) -> str:
    """The message on one line (torch's load_state_dict message, for one, spans several)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


@contextlib.contextmanager
def exit_on_user_error(status: int = 1):
    """Around an entry point's work: a user error prints `error: <message>` to stderr as one line and exits
    with `status`; every other exception propagates with its traceback."""
    try:
        yield
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(status) from None
