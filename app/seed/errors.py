"""What a seed refuses to do, as an exception: the command line turns it into its message on
stderr and an exit status, and a library caller decides for itself."""


class SeedError(Exception):
    """A database the dataset cannot go into; `str(error)` is the message for the operator."""

    exit_code = 1
