"""Small `_target_`s for the tests of config checking and building."""


class Block:
    """A block with a width and an optional inner block."""

    def __init__(self, width: int, inner: object = None, shape: tuple = (), scale: float = 1.0):
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.width, self.inner, self.shape, self.scale = width, inner, shape, scale


def broken(width: int) -> None:
    """A target with a bug: its TypeError is not a config problem."""
    raise TypeError("a bug inside the target")
