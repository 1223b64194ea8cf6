"""The exceptions a command raises to end with a readable message instead of a traceback.

`cli.main` prints each of their lines as ``error: …`` and exits with the class's code: `BadInput` 2 (the
user must fix what they gave), `Failure` 1 (the work itself failed). Interrupts keep typer's exit 130.
"""

from __future__ import annotations


class CommandError(Exception):
    """One or more lines for the user; `cli.main` prints them and exits with the subclass's `exit_code`."""

    exit_code: int

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class BadInput(CommandError):
    """One or more problems with what the user gave us, each a line naming the file/line/field and the fix.

    The CLI prints every line and exits with code 2; nothing may have been started or written before it
    is raised.
    """

    exit_code = 2


class Failure(CommandError):
    """The work itself failed after the input was accepted (training diverged, a file could not be written,
    every trial of a pair failed); each line says what happened and what was kept. The CLI exits with 1."""

    exit_code = 1
