"""The boot-time iptables helper, run as the redirect role's launcher runs it on a VM (roles/redirect/templates/
vmesh-iptables.j2), with the repository's collection (.collections) in place of the VM's lib tree:

    /usr/bin/python3 -I tests/harness/vmesh_iptables.py apply --config redirect.json

Standard library and the collection's module_utils only, as on the VM; nothing is done on import."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.dont_write_bytecode = True  # root (in a namespace) writes nothing into the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
    from ansible_collections.vmesh.mesh.plugins.module_utils.iptables import main

    sys.exit(main())
