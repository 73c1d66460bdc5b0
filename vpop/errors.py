"""User-facing errors.

A `UserError` is a mistake in what the user gave vpop (a config file, a data
file, a command-line value). The command line prints its message and exits
with status 2, without a traceback and without writing output.
"""


class UserError(Exception):
    """A bad input from the user: the message names the file, field or row."""

    exit_status = 2


class ConfigError(UserError):
    """A config file or config value is invalid."""


class DataError(UserError):
    """A data file (observations, patient table, cohort table) is invalid."""


def show_value(v) -> str:
    """A cell value for a message: 'abc', 3, 0.5, empty (never np.int64(3) or np.float64(nan))."""
    if hasattr(v, "item"):
        v = v.item()  # numpy scalar -> Python
    if isinstance(v, float):
        return "empty" if v != v else f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)
