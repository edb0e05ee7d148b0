"""The one exception the commands raise for a user's mistake."""


class CommandError(Exception):
    """Bad input, output or option: reported as one line naming the file or option, without a traceback."""
