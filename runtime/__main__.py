"""`python -m runtime` = the `emotiond` command."""

import sys

from runtime.entry import main

sys.exit(main())
