"""The one exception type for every data problem a user can cause."""

__all__ = ["DataError"]


class DataError(ValueError):
    """A user-caused data problem: wrong folder, malformed list file, too few images, bad option.

    The message names the path (and line), or the option, and says what was expected. The CLIs
    print it as ``error: ...`` and exit with status 2, before any training starts where the
    problem can be seen up front.

    >>> raise DataError("omniglot: /data/x: expected the folder holding images_background/")
    Traceback (most recent call last):
    ...
    dropgrad_fewshot.data.errors.DataError: omniglot: /data/x: expected the folder holding images_background/
    """
