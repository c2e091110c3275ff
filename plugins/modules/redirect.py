#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmesh contributors
# Apache License 2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redirect
short_description: Redirect a VM's TCP traffic to the vmesh Envoy sidecar with Istio-style iptables NAT rules
description:
  - Installs, checks or removes the C(nat) table rules that send a VM's TCP traffic through the sidecar, in
    Istio's C(istio-iptables) layout with vmesh's chain names.
  - Inbound, C(PREROUTING -p tcp -j VMESH_INBOUND) sends every TCP connection to the VM, except to the excluded
    ports, through C(VMESH_IN_REDIRECT) to the inbound capture port.
  - Outbound, C(OUTPUT -p tcp -j VMESH_OUTPUT) sends every TCP connection the VM opens to C(VMESH_REDIRECT)
    and the outbound capture port, except connections of the proxy itself (its uid or gid), connections to
    C(127.0.0.1), on the loopback interface from other users, from Envoy's passthrough source C(127.0.0.6), and
    the excluded ports and CIDRs. The proxy calling its own workload's address over the loopback interface is
    sent to the inbound capture port, as in Istio.
  - Both jumps are kept as rule 1 of C(PREROUTING) and C(OUTPUT), exactly once, so rules of other tools in those
    chains cannot bypass the mesh. Other tools' rules are never changed; rules that jump into vmesh's chains
    count as vmesh's.
  - Current rules are read with C(iptables-save -t nat); any difference (a missing, extra or reordered rule, a
    duplicated or displaced jump) is corrected in one C(iptables-restore --noflush) transaction.
  - The parameters are also written to O(config_path), which the boot-time unit re-applies with
    C(/opt/vmesh/bin/vmesh-iptables apply --config <config_path>), this module's own rule logic
    (C(plugins/module_utils/iptables.py)) installed by the C(vmesh.mesh.redirect) role.
  - The mesh is IPv4-only, so IPv6 is closed rather than captured, as C(istio-iptables) does without IPv6. In
    the C(filter) table of ip6tables, C(INPUT -p tcp -j VMESH_INBOUND_GUARD) and
    C(OUTPUT -p tcp -j VMESH_OUTPUT_GUARD) refuse (TCP reset) IPv6 TCP connections except on the loopback
    interface, established ones, the proxy's own, the excluded ports, and replies from the excluded inbound
    ports. No app is reached, or reaches out, over IPv6 around its sidecar. UDP is not captured. On a kernel
    without IPv6 (C(ipv6.disable=1)) there are no IPv6 rules.
  - Replies from the excluded inbound ports (SSH) leave uncaptured, but a packet that opens a connection (a SYN)
    from such a port is captured, so an app cannot bind its client socket to port 22 to go around the sidecar.
version_added: "0.1.0"
author:
  - vmesh contributors
options:
  state:
    description:
      - V(present) installs the rules and writes O(config_path).
      - V(absent) removes every vmesh chain and every rule jumping into one, and removes O(config_path).
        All other options are then ignored.
    type: str
    choices: [present, absent]
    default: present
  proxy_uid:
    description: User id Envoy runs as. Its own connections are not redirected.
    type: int
    default: 1337
  proxy_gid:
    description: Group id Envoy runs as. Its own connections are not redirected. Defaults to O(proxy_uid).
    type: int
  inbound_capture_port:
    description: Port of Envoy's inbound listener; inbound connections are redirected to it.
    type: int
    default: 15006
  outbound_capture_port:
    description: Port of Envoy's outbound listener; outbound connections are redirected to it.
    type: int
    default: 15001
  exclude_inbound_ports:
    description:
      - Destination ports of inbound connections that are never redirected.
      - The default keeps SSH and Envoy's own ports (admin 15000, 15001, 15006, health 15021, Prometheus 15090)
        reachable.
      - Must contain O(ssh_port) while O(include_inbound_ports) is V(*).
    type: list
    elements: int
    default: [22, 15000, 15001, 15006, 15021, 15090]
  include_inbound_ports:
    description:
      - V(*) redirects inbound connections to every port not in O(exclude_inbound_ports).
      - A list of ports redirects only those. An empty list redirects no inbound connection.
    type: raw
    default: "*"
  exclude_outbound_ports:
    description: Destination ports of outbound connections that are never redirected.
    type: list
    elements: int
    default: []
  exclude_outbound_cidrs:
    description: Destination IPv4 addresses or CIDRs of outbound connections that are never redirected.
    type: list
    elements: str
    default: []
  exclude_outbound_endpoints:
    description:
      - Destinations C(ADDRESS:PORT) (IPv4) that outbound connections reach uncaptured, for example the online
        CA server, so certificates renew while the proxy is down. Unlike O(exclude_outbound_ports), the port
        stays captured for every other address.
    type: list
    elements: str
    default: []
  include_outbound_cidrs:
    description:
      - V(*) redirects outbound connections to every destination not excluded.
      - A list of IPv4 CIDRs redirects only connections to those, for example the mesh's VIP range
        C(240.240.0.0/16).
    type: raw
    default: "*"
  ssh_port:
    description:
      - Port sshd listens on. The module fails, before changing anything, if inbound connections to it would be
        redirected, because that cuts Ansible off from the VM.
    type: int
    default: 22
  config_path:
    description:
      - JSON file holding these parameters, re-applied at boot. Written atomically with mode C(0644) when
        O(state=present), removed when O(state=absent). Never written in check mode.
    type: path
    default: /etc/vmesh/redirect.json
extends_documentation_fragment:
  - action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows vmesh's rules before and after, not changes to O(config_path).
  platform:
    platforms: posix
requirements:
  - iptables (C(iptables-save), C(iptables-restore), C(ip6tables-save), C(ip6tables-restore)); tested with
    iptables 1.8.9, nf_tables backend
  - root
notes:
  - Connections a workload opens to its own non-loopback address go over the loopback interface and are not
    redirected, as in Istio.
seealso:
  - name: Istio's istio-iptables
    description: The layout these rules follow.
    link: https://github.com/istio/istio/tree/master/tools/istio-iptables
"""

EXAMPLES = r"""
- name: Redirect TCP traffic to the sidecar
  vmesh.mesh.redirect:

- name: Redirect only mesh VIPs outbound, keep PostgreSQL out of the mesh
  vmesh.mesh.redirect:
    include_outbound_cidrs: [240.240.0.0/16]
    exclude_inbound_ports: [22, 5432, 15000, 15001, 15006, 15021, 15090]

- name: SSH listens on 2222
  vmesh.mesh.redirect:
    ssh_port: 2222
    exclude_inbound_ports: [2222, 15000, 15001, 15006, 15021, 15090]

- name: Take the VM out of the mesh
  vmesh.mesh.redirect:
    state: absent
"""

RETURN = r"""
rules:
  description:
    - The desired vmesh rules, one per line, in the form iptables-save prints them. C(-N) declares a chain,
      C(-I CHAIN 1) is a jump kept as rule 1, C(-A) a rule of one of vmesh's chains. Empty when O(state=absent).
  returned: always
  type: list
  elements: str
  sample:
    - -N VMESH_INBOUND
    - -N VMESH_IN_REDIRECT
    - -N VMESH_OUTPUT
    - -N VMESH_REDIRECT
    - -I PREROUTING 1 -p tcp -j VMESH_INBOUND
    - -I OUTPUT 1 -p tcp -j VMESH_OUTPUT
    - -A VMESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN
    - -A VMESH_INBOUND -p tcp -j VMESH_IN_REDIRECT
    - -A VMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
    - -A VMESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
    - -A VMESH_OUTPUT -j VMESH_REDIRECT
    - -A VMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
rules6:
  description:
    - The desired IPv6 guard rules (ip6tables, filter table), in the form of RV(rules). Empty when
      O(state=absent) or when the kernel has no IPv6.
  returned: always
  type: list
  elements: str
  sample:
    - -N VMESH_INBOUND_GUARD
    - -I INPUT 1 -p tcp -j VMESH_INBOUND_GUARD
    - -A VMESH_INBOUND_GUARD -i lo -j RETURN
    - -A VMESH_INBOUND_GUARD -p tcp -j REJECT --reject-with tcp-reset
diff:
  description:
    - vmesh's rules before and after, as text in the form of RV(rules). Jumps show their actual position
      (C(-I PREROUTING 3 ...)), so a displaced or duplicated jump is visible.
  returned: always
  type: dict
  contains:
    before:
      description: The vmesh rules found.
      type: str
    after:
      description: The vmesh rules wanted.
      type: str
config_changed:
  description: Whether O(config_path) was (or, in check mode, would be) written or removed.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmesh.mesh.plugins.module_utils.errors import HostError
from ansible_collections.vmesh.mesh.plugins.module_utils.redirect import argument_spec, ensure


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        result = ensure(module)
    except HostError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
