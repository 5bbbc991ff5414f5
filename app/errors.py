"""The error every command reports in one line, with a non-zero exit."""


class CliError(Exception):
    """A problem to report to the user in one line, with a non-zero exit."""
