"""The one exception type for input a user must fix (exit code 2, no traceback)."""

from __future__ import annotations


class BadInput(Exception):
    """One or more problems with what the user gave us, each a line naming the file/line/field and the fix.

    The CLI prints every line and exits with code 2; nothing may have been started or written before it
    is raised.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
