"""Errors a user can act on. Command lines turn them into exit code 2 and one ``error:`` line."""


class UserError(Exception):
    """Bad input or settings: the message says what is wrong and what to do."""


class InputError(UserError, ValueError):
    """A tensor, file or value that the library cannot accept."""


class ModelLoadError(UserError, OSError):
    """Weights that are missing, unreachable, unsafe or do not match the model."""
