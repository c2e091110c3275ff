"""``python -m vmesh``: the vmesh command (the canary playbook runs it with the Python that runs Ansible)."""

import sys

from vmesh.cli import main

sys.exit(main())
