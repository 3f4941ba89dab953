#!/usr/bin/env python3
"""Write tests/fixtures/MANIFEST.sha256: the SHA-256 of every file under tests/fixtures (but
the manifest), in `sha256sum` format, sorted by path, so that `sha256sum -c` run in
tests/fixtures checks them and tests/fixture_manifest.rs fails naming any file that changed,
appeared or went missing.

make_fixtures.py calls this at its end; after editing a fixture by hand, run it alone (it
needs only the standard library):

    python3 scripts/fixture_manifest.py
"""
import hashlib
import pathlib

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MANIFEST = FIXTURES / "MANIFEST.sha256"


def write_manifest(fixtures=FIXTURES):
    """Hash every file under `fixtures` into its MANIFEST.sha256; return how many."""
    manifest = fixtures / "MANIFEST.sha256"
    paths = sorted(
        path.relative_to(fixtures).as_posix()
        for path in fixtures.rglob("*")
        if path.is_file() and path != manifest
    )
    lines = []
    for path in paths:
        digest = hashlib.sha256((fixtures / path).read_bytes()).hexdigest()
        # Two spaces: sha256sum's text mode, which reads the same bytes as binary on Unix.
        lines.append(f"{digest}  {path}\n")
    manifest.write_text("".join(lines), encoding="utf-8", newline="\n")
    return len(paths)


if __name__ == "__main__":
    count = write_manifest()
    print(f"{MANIFEST}: {count} files")
