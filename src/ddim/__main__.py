"""``python -m ddim ...``: the same as the ``ddim`` console script."""

import sys

from .cli import main

sys.exit(main())
