"""Exceptions that separate problems in the user's data from bugs in qsmprep."""


class InputError(Exception):
    """The user's input (BIDS data, metadata, options) cannot be processed.

    The CLI prints the message on one line and exits non-zero without a traceback,
    so the message must name the file (or option) and say what is wrong with it.
    """

    def __init__(self, message, *, path=None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)
