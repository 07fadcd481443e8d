"""The errors geoseg raises on purpose.

Every error carries one line a user can act on (which file, what to do) and the exit code the CLI
uses for it: 2 for bad input or usage, 1 for a failure at run time. The CLI prints `str(error)`
and exits with `error.exit_code`; a traceback appears only with `-v`.
"""

from __future__ import annotations


class GeosegError(Exception):
    """Base class: a failure with a clear one-line message."""

    exit_code = 1


class InputError(GeosegError):
    """The user gave something geoseg cannot use (file, option, query). Exit code 2."""

    exit_code = 2


class OutputExistsError(InputError):
    """The output exists and neither --overwrite nor --append was given."""


class ModelLoadError(GeosegError):
    """A model could not be found or its checkpoint does not fit the architecture."""

    exit_code = 2


class EmptyResultError(GeosegError):
    """Nothing was found and the user asked to fail on that (--fail-on-empty). Exit code 3."""

    exit_code = 3
