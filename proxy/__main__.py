"""`python -m proxy` runs the poolproxy command line."""

import sys

from .cli import main

sys.exit(main())
