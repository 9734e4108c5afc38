"""``python -m act_fast.cli``: the same as the ``act-fast`` command."""

import sys

from act_fast.cli import main

sys.exit(main())
