#!/bin/sh
# vmesh preflight: what a host needs before vmesh may change anything on it. Runs as root with /bin/sh only (no
# Python needed, it is one of the things checked). Prints one line per missing prerequisite:
#   missing<TAB><what><TAB><Debian package, or - when no package provides it><TAB><why>
# and, last, "checked <role>". Exit status 0 whatever is missing: the caller decides.
#
# Usage: vmesh-prerequisites.sh mesh [INOTIFY]|ca-server
# mesh: a mesh host (sidecar, identity, capture); ca-server: the online CA's host (python3, openssl, systemd).
# INOTIFY: the inotify instances this host's Envoy needs (one per file of its config it watches, twice over for a
# hot restart); fs.inotify.max_user_instances must allow them.
set -u
role=${1:-mesh}
inotify=${2:-0}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH LC_ALL=C

missing() { printf 'missing\t%s\t%s: %s\n' "$2" "$1" "$3"; }
have() { command -v "$1" >/dev/null 2>&1; }

if [ "$(id -u)" != 0 ]; then
  missing "root" - "the check does not run as root: the Ansible user needs become (sudo) on this host"
fi

# systemd as PID 1: the proxy, the redirect and renewal are systemd units.
if [ ! -d /run/systemd/system ] || ! have systemctl; then
  missing "systemd" - "systemd is not the running init (no /run/systemd/system); vmesh runs its parts as systemd units"
fi

# Python 3.8 or newer: Ansible's modules and vmesh's agents run on it.
if ! have python3; then
  missing "python3" python3 "no python3 command; Ansible's modules need Python 3.8 or newer on the host"
elif ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null; then
  missing "python3" python3 "python3 is older than 3.8 ($(python3 -V 2>&1)); Ansible's modules need 3.8 or newer"
fi

# openssl: the workload key and CSR are made on the host, never sent to it.
if ! have openssl; then
  missing "openssl" openssl "no openssl command; the workload's key and certificate request are made with it"
fi

[ "$role" = ca-server ] && { # inotify: Envoy watches each file of its config (file-based xDS) with an inotify instance of its own, and a hot
# restart runs two Envoys for a while. Below the limit, Envoy aborts at start or on a push.
limit=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
case "$inotify$limit" in *[!0-9]*) inotify=0 ;; esac
if [ "$inotify" -gt 0 ] && [ "$limit" -lt "$inotify" ]; then
  missing "inotify instances" - "fs.inotify.max_user_instances is $limit and this host's Envoy needs $inotify (one per file of its config, twice over during a hot restart): raise it (sysctl -w fs.inotify.max_user_instances=$inotify, and a file in /etc/sysctl.d/ for the next boot), or narrow what the host sees with a Sidecar"
fi
echo "checked $role"; exit 0; }

# iptables: the capture (both address families).
for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  if ! have "$cmd"; then
    missing "$cmd" iptables "no $cmd command; the traffic capture is applied with it"
  fi
done

# The kernel features the capture uses, tried for real in a chain of our own that is removed at once: the nat
# table, REDIRECT, the owner and conntrack matches, multiport. Nothing else of the host's rules is touched.
if have iptables-restore && have iptables && [ "$(id -u)" = 0 ]; then
  chain=VMESH_PREFLIGHT
  iptables -w 5 -t nat -F "$chain" >/dev/null 2>&1 && iptables -w 5 -t nat -X "$chain" >/dev/null 2>&1
  if ! out=$(printf '%s\n' '*nat' ":$chain - [0:0]" \
      "-A $chain -p tcp -m owner --uid-owner 1337 -j RETURN" \
      "-A $chain -p tcp -m owner --gid-owner 1337 -j RETURN" \
      "-A $chain -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN" \
      "-A $chain -p tcp -m multiport --dports 22,15000 -j RETURN" \
      "-A $chain -p tcp -j REDIRECT --to-ports 15001" COMMIT | iptables-restore -w 5 --noflush 2>&1); then
    why=$(printf '%s' "$out" | tr '\n\t' '  ')
    missing "kernel nat capture" - "the kernel refused the capture's rules (nat table, REDIRECT, owner, conntrack, multiport): $why"
  fi
  iptables -w 5 -t nat -F "$chain" >/dev/null 2>&1 && iptables -w 5 -t nat -X "$chain" >/dev/null 2>&1
fi
# inotify: Envoy watches each file of its config (file-based xDS) with an inotify instance of its own, and a hot
# restart runs two Envoys for a while. Below the limit, Envoy aborts at start or on a push.
limit=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
case "$inotify$limit" in *[!0-9]*) inotify=0 ;; esac
if [ "$inotify" -gt 0 ] && [ "$limit" -lt "$inotify" ]; then
  missing "inotify instances" - "fs.inotify.max_user_instances is $limit and this host's Envoy needs $inotify (one per file of its config, twice over during a hot restart): raise it (sysctl -w fs.inotify.max_user_instances=$inotify, and a file in /etc/sysctl.d/ for the next boot), or narrow what the host sees with a Sidecar"
fi
echo "checked $role"
