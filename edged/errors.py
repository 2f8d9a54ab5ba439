"""Typed errors with messages a user can act on.

Every error names the thing that was wrong and what was expected, so a log
line or a CLI message is enough to fix the problem without reading code.
"""

from __future__ import annotations

import errno
import os

#: exit status of any edged command for an invalid configuration (sysexits EX_CONFIG); the
#: systemd units list it in RestartPreventExitStatus= so a config error does not restart-loop
EXIT_CONFIG = 78


class EdgedError(Exception):
    """Base class for every error edged raises on purpose."""


class MissingDependencyError(EdgedError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ManifestError(EdgedError):
    """A model manifest is missing, unparsable or lacks a required field."""


class IntegrityError(EdgedError):
    """An artifact's sha256 differs from the manifest: the file is refused."""


class UnknownModelError(EdgedError, KeyError):
    """A model name that is not in the catalogue."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown model"


class InputError(EdgedError, ValueError):
    """An input array does not fit the model (shape, dtype, NaN/inf)."""


class BackendError(EdgedError):
    """A runtime backend failed to load or run a model."""


class ConfigError(EdgedError):
    """A configuration file or value is invalid."""


class Interrupted(EdgedError):
    """Work stopped early because a stop was requested (SIGTERM during start-up profiling)."""


class LogStorageError(EdgedError):
    """The logs directory or a log file cannot be created or written; the message says what to do."""


class SourceError(EdgedError):
    """A sensor source cannot take its endpoint (e.g. a ZeroMQ bind fails); names the endpoint and errno."""


def describe_os_error(exc: BaseException) -> str:
    """``No space left on device (ENOSPC)`` for an error with an errno; else its text, bounded (or its type).

    The one way edged names an OS error in a message, STATUS= or the journal: the text a user
    searches for and the symbol a developer greps for.
    """
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return f"{os.strerror(code)} ({errno.errorcode[code]})"
    return str(exc)[:200] or type(exc).__name__
