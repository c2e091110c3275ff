"""What ``vmesh status`` and ``vmesh proxy-config`` read on a mesh host, as one JSON object on stdout.

Run on the host by ``python3 -`` (as root: the redirect rules and the config directory), with one argument, a
JSON object::

    {"config_dir": "/etc/vmesh/envoy", "certs_dir": "/etc/vmesh/certs", "admin": "127.0.0.1:15000",
     "redirect": ["/opt/vmesh/bin/vmesh-iptables", "show", "--config", "/etc/vmesh/redirect.json"],
     "admin_paths": ["/server_info", "/config_dump?include_eds"]}

Out: ``files`` ({name: SHA-256} of the config version in force, ``..data``), ``version`` (its directory's name,
which carries the time of the push), ``bootstrap_mtime``, ``admin`` ({path: parsed JSON, or null when Envoy does
not answer}), ``cert`` (the workload certificate, PEM: public), ``redirect`` (the output and status of the
command). Reads only; standard library only, Python 3.8+.
"""
import hashlib
import json
import os
import subprocess
import sys
import urllib.request

DATA = "..data"
MAX_BYTES = 64 << 20


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_files(config_dir):
    """The files of the version in force (``..data``); a directory of plain files (the layout before versions)
    is read as it is."""
    data = os.path.join(config_dir, DATA)
    out = {"files": {}, "version": None, "bootstrap_mtime": None}
    try:
        out["version"] = os.readlink(data)
    except OSError:
        data = config_dir
    try:
        names = os.listdir(data)
    except OSError as exc:
        out["error"] = "%s: %s" % (data, exc.strerror)
        return out
    for name in sorted(names):
        path = os.path.join(data, name)
        if name.endswith(".json") and not name.startswith(".") and os.path.isfile(path) and not os.path.islink(path):
            out["files"][name] = sha256(path)
    try:
        out["bootstrap_mtime"] = os.stat(os.path.join(data, "envoy.json")).st_mtime
    except OSError:
        pass
    return out


def admin(address, path):
    try:
        with urllib.request.urlopen("http://%s%s" % (address, path), timeout=10) as response:
            body = response.read(MAX_BYTES)
        return json.loads(body.decode("utf-8"))
    except (OSError, ValueError):
        return None


def main():
    spec = json.loads(sys.argv[1])
    out = config_files(spec["config_dir"])
    out["now"] = __import__("time").time()
    out["admin"] = {path: admin(spec.get("admin", "127.0.0.1:15000"), path) for path in spec.get("admin_paths", [])}
    try:
        with open(os.path.join(spec["certs_dir"], "cert-chain.pem"), encoding="ascii") as handle:
            out["cert"] = handle.read(1 << 20)
    except (OSError, ValueError):
        out["cert"] = None
    if spec.get("redirect"):
        try:
            proc = subprocess.run(spec["redirect"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
                                  check=False)
            out["redirect"] = {"rc": proc.returncode, "output": proc.stdout.decode("utf-8", "replace")}
        except (OSError, subprocess.TimeoutExpired) as exc:
            out["redirect"] = {"rc": -1, "output": str(exc)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
