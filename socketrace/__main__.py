"""``python -m socketrace``."""

import sys

from .cli import main

sys.exit(main())
