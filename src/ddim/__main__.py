"""``python -m ddim ...``: the same as the ``ddim`` console script."""

import os
import sys

from .cli import entry, main

# The quick exit only when this file is the program itself: under `python -m cProfile -m ddim`, pdb or a
# runpy host, the caller still has work to do after ddim returns.
if sys.argv and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
    entry()
else:
    sys.exit(main())
