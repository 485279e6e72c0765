"""Errors a user can cause. The CLI turns these into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input or environment (bad file, bad template, missing token...).

    The message must be a single, self-contained line: it is all the user will see.
    """

    exit_code = 2
