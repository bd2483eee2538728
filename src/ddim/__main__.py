"""``python -m ddim ...``: the same as the ``ddim`` console script."""

from .cli import entry

entry()
