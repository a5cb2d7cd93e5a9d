"""Installation: the wheel and sdist are complete, commands have no side effects, closed pipes.

The wheel test builds the sdist and, from it, the wheel (``python -m build --no-isolation``, no
network), checks both with ``twine check``, installs the wheel into a fresh virtual environment
that reuses this environment's dependencies, and then runs that environment's own ``mr0``,
``mr0-server`` and ``mr0-client`` from an empty folder: a ``default`` session and a
``mr0_preview`` session must come back with images.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, REPO

from mr0core.clitools import CLOSED_PIPE_STATUS
from mr0core.io.mrd_images import read_mrd_images

BIN = Path(sys.executable).parent
SOURCES = ("pyproject.toml", "README.md", "mr0core", "gadgets", "scheduler")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_clean_env())  # fmt: skip
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """This environment without anything that would put the source tree on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # never the network
    return env


def _images(path: Path) -> list[np.ndarray]:
    return [np.asarray(im.data) for im in read_mrd_images(path)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel built from it, from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        else:
            shutil.copy2(REPO / name, src / name)
    dist = src / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src], cwd=src)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1, wheels
    assert len(sdists) == 1, sdists
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_twine_accepts_the_sdist_and_the_wheel(built: dict[str, Path]) -> None:
    out = _run([sys.executable, "-m", "twine", "check", "--strict", built["sdist"],
                built["wheel"]], cwd=built["wheel"].parent)  # fmt: skip
    assert out.count("PASSED") == 2, out


def test_wheel_carries_its_data(built: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    chains = {p.name for p in (REPO / "gadgets" / "config" / "chains").glob("*.xml")}
    gadgetron = {p.name for p in (REPO / "gadgets" / "config" / "gadgetron").glob("*.xml")}
    static = {p.name for p in (REPO / "gadgets" / "serve" / "static").iterdir()}
    brain = {p.name for p in (REPO / "mr0core" / "data" / "brain").iterdir()}
    expected = {"gadgets/config/chains": chains, "gadgets/config/gadgetron": gadgetron,
                "gadgets/serve/static": static, "mr0core/data/brain": brain}  # fmt: skip
    for folder, files in expected.items():
        assert files, folder
        missing = {f for f in files if f"{folder}/{f}" not in names}
        assert not missing, f"{folder}: {missing} not in the wheel"
    assert not any(n.startswith(("tests/", "config/")) for n in names)


def test_installed_wheel_serves_a_preview(built: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    vbin = venv / "bin"
    # Reuse this environment's dependencies (no network): its site-packages go last on the new
    # environment's path. A path added by a .pth file does not run the .pth files inside it, so
    # this environment's editable install of the sources stays out.
    purelib = Path(
        subprocess.run([vbin / "python", "-c", "import sysconfig; print(sysconfig.get_path("
                        "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip()
    )  # fmt: skip
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "zz_mr0_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([vbin / "python", "-m", "pip", "install", "-q", "--no-deps", built["wheel"]],
         cwd=tmp_path)  # fmt: skip

    work = tmp_path / "work"  # an empty folder: nothing of the sources is near
    work.mkdir()
    where = _run([vbin / "python", "-c", "import mr0core, gadgets, scheduler; print(mr0core."
                  "__file__, gadgets.__file__, scheduler.__file__)"], cwd=work)  # fmt: skip
    for module in where.split():
        assert Path(module).is_relative_to(venv), f"{module} is not the installed wheel's"
    configs = Path(_run([vbin / "python", "-m", "gadgets.serve.gadgetron_external",
                         "--configs-dir"], cwd=work).strip())  # fmt: skip
    assert configs.is_relative_to(venv)
    assert (configs / "mr0_twin_preview.xml").is_file()

    seq = CORPUS / "write_gre.seq"
    _run([vbin / "mr0", "simulate", seq, "--size", "32", "--out", "raw.h5"], cwd=work)
    port = _free_port()
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [str(vbin / "mr0-server"), "--port", str(port), "--log-level", "warning"],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, (work / "server.log").read_text()
                assert time.monotonic() < deadline, "mr0-server did not start"
                time.sleep(0.1)
        client = [vbin / "mr0-client", "-p", str(port), "-q"]
        _run([*client, "raw.h5", "-c", "default", "-o", "default.h5"], cwd=work)
        _run([*client, "--preview", seq, "--size", "32", "-o", "preview.h5"], cwd=work)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
    for name in ("default.h5", "preview.h5"):
        images = _images(work / name)
        assert images, f"{name} holds no image"
        assert all(im.size >= 32 * 32 and np.isfinite(im).all() and np.abs(im).max() > 0
                   for im in images), name  # fmt: skip
    assert server.returncode == 0, (work / "server.log").read_text()


def test_site_chains_come_first_and_builtins_stay(tmp_path: Path) -> None:
    from gadgets.framework.chain import DEFAULT_CHAINS_DIR, ChainError, available_chains, chain_path

    site = tmp_path / "chains"
    site.mkdir()
    (site / "site_only.xml").write_text((DEFAULT_CHAINS_DIR / "passthrough.xml").read_text())
    (site / "default.xml").write_text((DEFAULT_CHAINS_DIR / "passthrough.xml").read_text())
    assert chain_path("site_only", site) == (site / "site_only.xml").resolve()
    assert chain_path("default", site) == (site / "default.xml").resolve()  # the site's wins
    assert chain_path("sense", site) == (DEFAULT_CHAINS_DIR / "sense.xml").resolve()
    assert chain_path("default") == (DEFAULT_CHAINS_DIR / "default.xml").resolve()
    assert {"site_only", "sense", "default"} <= set(available_chains(site))
    with pytest.raises(ChainError, match="no chain 'site_only'"):
        chain_path("site_only")  # not without the site folder
    with pytest.raises(ChainError, match="not a plain name"):
        chain_path("../chains/default", site)


# -- commands: no side effects, quiet on a closed pipe -------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["jobs"],
                                     ["jobs", "--json"], ["cancel", "abc"]])  # fmt: skip
def test_scheduler_read_commands_create_no_store(tmp_path: Path, command: list[str]) -> None:
    done = subprocess.run([str(BIN / "mr0-scheduler"), *command], cwd=tmp_path, text=True,
                          capture_output=True, timeout=120, env=_clean_env())  # fmt: skip
    assert done.returncode == (2 if command[0] == "cancel" else 0), done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == [], "a read-only command created files"


@pytest.mark.parametrize(
    "command",
    [
        ["mr0", "seq-info", str(CORPUS / "write_gre.seq")],
        ["mr0-scheduler", "status"],
        ["mr0-scheduler", "jobs", "--json"],
        ["mr0-server", "--help"],
        ["mr0-client", "--help"],
    ],
)
def test_commands_exit_quietly_on_a_closed_pipe(tmp_path: Path, command: list[str]) -> None:
    read, write = os.pipe()
    proc = subprocess.Popen([str(BIN / command[0]), *command[1:]], cwd=tmp_path, stdout=write,
                            stderr=subprocess.PIPE, text=True, env=_clean_env())  # fmt: skip
    os.close(write)
    os.close(read)  # the reader goes away before the command writes
    _, err = proc.communicate(timeout=120)
    # argparse's help swallows a failed write itself; whatever is left fails at the flush
    want = {0, CLOSED_PIPE_STATUS} if "--help" in command else {CLOSED_PIPE_STATUS}
    assert proc.returncode in want, err
    assert "Traceback" not in err, err
    assert "BrokenPipe" not in err, err
    assert "Exception ignored" not in err, err


def test_a_closed_pipe_without_the_wrapper_is_a_traceback(tmp_path: Path) -> None:
    """Negative control: the same closed pipe, printing without the wrapper, fails loudly."""
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5); print('x')"],
                            stdout=write, stderr=subprocess.PIPE, text=True)  # fmt: skip
    os.close(write)
    os.close(read)
    _, err = proc.communicate(timeout=60)
    assert "BrokenPipeError" in err


# -- the README's commands are the ones CI runs --------------------------------------------------


def test_ci_runs_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Set up, run, test.*?```bash\n(.*?)```", readme, re.S)
    assert block, "the README's set-up block is missing"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    setup, test = [c for c in commands if c]
    assert setup.startswith("bash scripts/setup.sh")
    ci = (REPO / ".ci" / "run").read_text()
    assert "\n" + test + "\n" in ci, f"CI does not run the README's test command {test!r}"
    assert "bash scripts/setup.sh" in ci
    assert "env -i" in ci, "CI must run the set-up with only the system's PATH"
