"""The installed package is one namespace, ``xel``: a wheel built from the repo holds ``xel/...`` only, and after a
plain (non-editable) install ``import xel.train`` works while ``import train`` does not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("detect", "encoder", "link", "precompute", "retrieval", "train")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tracked files (so the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file() and rel.split("/")[0] in (*PARTS, "xel") or rel in ("pyproject.toml", "README.md"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(out)], check=True, capture_output=True)
    (whl,) = out.glob("xel-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_holds_only_the_xel_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"xel"}, sorted(tops)
    for part in PARTS:
        assert f"xel/{part}/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "xel-train = xel.train.cli:main" in scripts and "xel-serve = xel.link.serve:main" in scripts


@pytest.mark.slow
def test_a_plain_install_imports_xel_parts_and_not_bare_names(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    # -I: ignore PYTHONPATH and the user site, and leave the current directory off sys.path; the installed copy comes
    # first on the path, so it is the one imported (the checkout's editable install maps xel.* too, later)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import xel.train.model, xel.link.linker, xel.precompute.run; "
            "assert xel.train.model.__file__.startswith(sys.argv[1]), xel.train.model.__file__\n"
            "for bare in ('train', 'link', 'precompute', 'retrieval', 'encoder'):\n"
            "    try:\n        __import__(bare)\n    except ImportError:\n        continue\n"
            "    raise SystemExit(f'import {bare} worked')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", code, str(site)], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
