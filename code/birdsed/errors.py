"""Errors whose message is the reason a user reads in `output/failure`."""


class UserError(Exception):
    """A problem with the user's input (hyperparameters, data, channels), not with birdsed.

    The message must say what is wrong and what to do; it is written verbatim to the failure
    file, so keep it to one paragraph.
    """


class ConfigError(UserError):
    """A hyperparameter is unknown, malformed or out of range."""


class DataError(UserError):
    """The dataset cannot be used as given."""


class DivergenceError(UserError):
    """Training produced non-finite losses for too many consecutive steps."""


class RendezvousError(UserError):
    """The hosts' training processes could not meet (a port taken, the first host gone or unreachable)."""


class TrainingStopped(Exception):
    """The job was asked to stop (SIGTERM) and saved its state; a restart resumes from it."""
