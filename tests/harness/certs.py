"""Test certificates made with the openssl command: a CA and server certificates signed by it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(folder: Path, name: str = "vmesh test CA") -> Path:
    """``folder/ca.crt`` and ``ca.key``, the folder and certificate readable by every uid; returns the
    certificate's path."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"))
    (folder / "ca.crt").chmod(0o644)
    return folder / "ca.crt"


@contextlib.contextmanager
def ca_folder(folder: Path) -> Iterator[Path]:
    """A fresh ``folder`` with a CA in it (:func:`make_ca`), removed afterwards."""
    shutil.rmtree(folder, ignore_errors=True)
    make_ca(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_server(folder: Path, ca_folder: Path, names: list[str], stem: str) -> tuple[Path, Path]:
    """``folder/<stem>.crt`` (for ``names``) and ``<stem>.key``, signed by the CA in ``ca_folder``."""
    key, csr, crt = folder / f"{stem}.key", folder / f"{stem}.csr", folder / f"{stem}.crt"
    ext = folder / f"{stem}.ext"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj",
             f"/CN={names[0]}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_folder / "ca.crt"), "-CAkey", str(ca_folder / "ca.key"),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))
    for path in (key, crt):
        path.chmod(0o644)  # read by Envoy's uid in the tests
    return crt, key


def make_workload(folder: Path, ca_folder: Path, identity: str, *, days: int = 2, bundle: str | None = None) -> Path:
    """A workload's mesh identity in ``folder`` as the certs role lays it out: ``cert-chain.pem`` (URI SAN
    ``identity``), ``key.pem`` and ``root-cert.pem`` (the CA in ``ca_folder``), symlinks into a versioned
    folder that ``..data`` points to; ``bundle`` (PEM) replaces that CA as the trust bundle. A second call swaps ``..data`` in one rename, which Envoy's SDS
    ``watched_directory`` reloads on. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    version = Path(tempfile.mkdtemp(prefix="..test.", dir=folder))
    version.chmod(0o755)
    key, csr, crt, ext = (version / n for n in ("key.pem", "csr.pem", "cert-chain.pem", "ext.cnf"))
    ext.write_text(f"subjectAltName=critical,URI:{identity}\nextendedKeyUsage=serverAuth,clientAuth\n"
                   "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj",
             "/O=vmesh-test", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_folder / "ca.crt"), "-CAkey", str(ca_folder / "ca.key"),
             "-CAcreateserial", "-days", str(days), "-extfile", str(ext), "-out", str(crt))
    (version / "root-cert.pem").write_text(bundle or (ca_folder / "ca.crt").read_text())
    for path in (key, crt, version / "root-cert.pem"):
        path.chmod(0o644)  # read by Envoy's uid in the tests
    csr.unlink()
    ext.unlink()
    data, staged = folder / "..data", folder / "..data_tmp"
    old = data.resolve() if data.is_symlink() else None
    staged.unlink(missing_ok=True)
    staged.symlink_to(version.name)
    staged.rename(data)
    for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if old is not None and old != version.resolve():
        shutil.rmtree(old, ignore_errors=True)
    return folder
