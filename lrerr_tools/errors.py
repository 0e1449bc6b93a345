"""The one exception type a user is meant to see."""


class LrerrError(Exception):
    """Bad input or wrong stage order: the CLI prints the message as one line and exits 2.

    Raise it with a message that names the file or option at fault and, where there is
    one, the fix. Anything else escaping a stage is a bug and keeps its traceback.
    """
