"""Errors whose message is meant for the user, and the one-line description of any error.

Shared by the training runner and the ``mara`` command (which maps them to exit statuses), so that
the runner never imports the command-line layer.
"""

from __future__ import annotations

import errno
import re

#: Exceptions that mean the input is wrong (a setting, a path, a file's content) when raised before
#: the command's work starts; the libraries' messages name the value, the valid range and the fix.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # also agents.authors_format.UnsafeFileError
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ModuleNotFoundError,
)


class UserFacingError(Exception):
    """An error raised by this library whose message already says what failed and what to do."""


class CommandFailed(UserFacingError):
    """A failure while the command ran (exit status 1). The message says what failed and what to do."""


def describe(error: BaseException) -> str:
    """One line saying what went wrong: the message of the libraries' own errors, else the type too.

    Operating-system errors get what to do (a folder that cannot be written, a full disk).

    Example::

        >>> describe(KeyError("top_k"))
        "KeyError: 'top_k'"
        >>> describe(ValueError("top_k must be >= 1, got 0."))
        'top_k must be >= 1, got 0.'
    """
    known = isinstance(error, (*INPUT_ERRORS, UserFacingError))
    text = str(error) if known else f"{type(error).__name__}: {error}"
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, FileExistsError)):
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += ". Choose a folder that can be written (e.g. another --out), or fix its permissions"
        elif error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            text += ". Free disk space (or raise the file-size limit), or write to another disk with --out"
    # Tracebacks of the libraries below often carry newlines and terminal colour codes
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
