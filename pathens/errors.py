"""The errors pathens raises for bad input: each a ValueError with a one-line message that says
what is wrong and what to do about it."""


class PathensError(ValueError):
    """Base class: a user error (bad model, checkpoint, data or argument), never a bug."""


class WrapError(PathensError):
    """The model cannot be seen as stem -> residual blocks -> head."""


class CheckpointError(PathensError):
    """A checkpoint file is missing, unsafe, not a state dict, or does not fit the model."""
