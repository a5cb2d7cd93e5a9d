"""Every code block of the README runs, and every link of it points at a file that exists.

Blocks run as a newcomer would run them, from the repository's root: here in a temporary folder
that links ``.venv`` and ``mr0core`` of this checkout, so that what they write lands there. The
set-up block's two commands are what CI runs (``tests/project/test_install.py`` checks that); its
main job (``mr0 demo``) runs here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)
SETUP = re.search(r"## Set up, run, test.*?```bash\n(.*?)```", README, re.S)


def _workdir(tmp_path: Path) -> Path:
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv if (venv / "bin").is_dir() else REPO / ".venv")
    (tmp_path / "mr0core").symlink_to(REPO / "mr0core")
    return tmp_path


def test_the_readme_is_short_and_its_blocks_are_known() -> None:
    assert len(README.splitlines()) < 200
    assert SETUP is not None
    langs = [lang for lang, _ in BLOCKS]
    assert set(langs) <= {"bash", "python"}, f"a block this test cannot run: {langs}"
    assert len(BLOCKS) >= 3  # set-up, a library example, a server example


def test_the_setup_blocks_main_job_runs(tmp_path: Path) -> None:
    assert SETUP is not None
    first = SETUP.group(1).splitlines()[0].split("#")[0]
    setup, main_job = (part.strip() for part in first.split("&&"))
    assert setup == "bash scripts/setup.sh"  # what CI runs (tests/project/test_install.py)
    work = _workdir(tmp_path)
    done = subprocess.run(main_job, shell=True, cwd=work, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = work / "mr0_demo"
    assert (out / "demo_flash.nii.gz").is_file()
    assert any(out.glob("*.png"))


@pytest.mark.parametrize(
    ("lang", "code"),
    [block for block in BLOCKS if block[1] != (SETUP.group(1) if SETUP else None)],
    ids=lambda value: value if value in ("bash", "python") else "",
)
def test_a_readme_block_runs(tmp_path: Path, lang: str, code: str) -> None:
    work = _workdir(tmp_path)
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    if "--preview" in code:  # the server example brings back the preview image
        assert (work / "preview.h5").stat().st_size > 0


def test_the_readmes_links_point_at_files() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "the README links into the docs"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"links to nothing: {missing}"
