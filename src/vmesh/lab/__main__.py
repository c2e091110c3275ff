"""``python -m vmesh.lab``: the same as ``vmesh lab``."""

import sys

from vmesh.lab.commands import main

sys.exit(main())
