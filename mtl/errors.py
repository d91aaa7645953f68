"""Errors a user can act on. Jobs print their message and exit non-zero, without a traceback."""


class JobError(RuntimeError):
    """A job failed for a reason the user can act on; the message says what and where."""


class InputError(JobError):
    """An input is missing, empty, or not shaped as its format promises."""
