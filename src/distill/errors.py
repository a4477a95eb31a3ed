"""The one exception type for bad user input: the entry points print it as a single line and exit non-zero."""


class DistillError(Exception):
    """A problem with the user's configuration, files or models, explained in one line."""
