"""One exception type for problems the user can fix.

Everything the CLI reports as "one clear sentence, non-zero exit, no traceback" is raised
as :class:`DicycError`; anything else escaping is a bug and keeps its traceback.
"""


class DicycError(Exception):
    """A user-facing error: its message is one sentence naming the file and the problem."""
