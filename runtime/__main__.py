"""`python -m runtime` = the `emotiond` command."""

import sys

from runtime.cli import main

sys.exit(main())
