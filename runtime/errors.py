"""The one exception type for problems a user can cause (bad path, bad config, bad model)."""


class UserError(Exception):
    """Printed as one line on stderr by the command line, which then exits with code 2."""
