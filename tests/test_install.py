"""medseg works from a plain (non-editable) install, used from another folder than the source tree.

The package is built as a wheel from a copy of the sources and installed without its dependencies
into a fresh venv; a ``.pth`` line puts the test venv's ``site-packages`` behind it for the
dependencies (a plain path line does not run the editable finder installed there, so the fresh
install's medseg is the one imported: checked). Nothing is downloaded. From an empty folder, with
no ``MEDSEG_*`` variable set:

* ``medseg segment SERIES --bundle PATH --output OUT`` writes all four outputs;
* ``medseg serve --help`` works, ``--prepare-only`` prepares a workdir from a bundle path, and
  without any bundle it says what to give;
* ``medseg demo`` says where the bundle is expected, and runs when told where data and bundles are;
* ``medseg serve`` starts the MONAI Label server from the installed package (the label venv imports
  that same installed medseg) and answers an inference request (skipped without the label venv).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, call, fold_cases, label_python, make_msd_studies

pytestmark = [pytest.mark.slow, pytest.mark.needs_data]

BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet3d"
OUTPUTS = ("segmentation.nii.gz", "segmentation.dcm", "overlay.png", "report.json")
NO_NETWORK = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 600)
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user of the installed package: no source tree, no medseg settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MEDSEG_")}
    env.update(NO_NETWORK)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    shutil.copytree(REPO_ROOT / "medseg", src / "medseg", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    env = dict(os.environ, **NO_NETWORK)
    proc = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((root / "dist").glob("medseg-*.whl"))

    venv = root / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    python = venv / "bin" / "python"
    proc = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
    (Path(purelib.strip()) / "medseg-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    proc = _run([str(python), "-c", "import medseg; print(medseg.__file__)"], env=_clean_env(), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()).resolve().is_relative_to(venv.resolve()), proc.stdout
    return {"venv": venv, "medseg": venv / "bin" / "medseg", "cwd": elsewhere, "root": root}


@pytest.mark.timeout(900)
def test_segment_from_an_installed_package_writes_all_outputs(installed, shared_data: Path):
    series = shared_data / "dicom" / "hippocampus-crops" / "Study1"
    out = installed["root"] / "segment-out"
    proc = _run(
        [str(installed["medseg"]), "segment", str(series), "--bundle", str(BUNDLE), "--output", str(out)],
        env=_clean_env(),
        cwd=installed["cwd"],
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, (name, sorted(os.listdir(out)))


@pytest.mark.timeout(600)
def test_serve_from_an_installed_package_finds_its_recipe_or_says_what_to_give(installed):
    medseg_cmd, cwd, env = str(installed["medseg"]), installed["cwd"], _clean_env()
    proc = _run([medseg_cmd, "serve", "--help"], env=env, cwd=cwd)
    assert proc.returncode == 0 and "--bundles-dir" in proc.stdout, proc.stderr

    work = installed["root"] / "serve-work"
    proc = _run(
        [
            medseg_cmd,
            "serve",
            "--bundles",
            str(BUNDLE),
            "--workdir",
            str(work),
            "--port",
            "0",
            "--prepare-only",
        ],
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "medseg.serve.label.asgi:app" in proc.stdout
    assert (work / "app" / "main.py").is_file()
    assert (work / "app" / "model" / BUNDLE.name / "models" / "model.pt").is_file()
    site = installed["venv"].resolve()
    recipe = _run(
        [
            str(installed["venv"] / "bin" / "python"),
            "-c",
            "from medseg.serve import launcher; print(launcher.LABEL_VENV_SCRIPT)",
        ],
        env=env,
        cwd=cwd,
    ).stdout.strip()
    assert Path(recipe).is_file() and Path(recipe).resolve().is_relative_to(site), recipe

    proc = _run([medseg_cmd, "serve", "--workdir", str(work), "--prepare-only"], env=env, cwd=cwd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no bundles folder found" in proc.stderr and "--bundles-dir DIR" in proc.stderr, proc.stderr


@pytest.mark.timeout(900)
def test_demo_from_an_installed_package_says_where_things_are_expected(installed, shared_data: Path):
    medseg_cmd, cwd = str(installed["medseg"]), installed["cwd"]
    out = installed["root"] / "demo-out"
    proc = _run([medseg_cmd, "demo", "--output", str(out)], env=_clean_env(), cwd=cwd)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "hippocampus_unet3d was not found" in proc.stderr and "--bundle PATH" in proc.stderr, proc.stderr
    assert "MEDSEG_BUNDLES_DIR" in proc.stderr, proc.stderr

    env = _clean_env(MEDSEG_DATA_DIR=str(shared_data), MEDSEG_BUNDLES_DIR=str(BUNDLE.parent))
    proc = _run([medseg_cmd, "demo", "--output", str(out)], env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "hippocampus DICOM crop series" in proc.stdout, proc.stdout
    assert list(out.rglob("segmentation.dcm")), sorted(str(p) for p in out.rglob("*"))


@pytest.mark.needs_label_venv
@pytest.mark.timeout(900)
def test_serve_from_an_installed_package_runs_that_medseg_in_the_label_venv(installed, hippocampus_dir: Path):
    python = label_python()
    root = installed["root"]
    studies = make_msd_studies(hippocampus_dir, root / "serve-studies", fold_cases(hippocampus_dir, 0)[:1])
    work = root / "serve-live"
    with subprocess.Popen(
        [
            str(installed["medseg"]),
            "serve",
            "--studies",
            str(studies),
            "--bundles",
            str(BUNDLE),
            "--port",
            "0",
            "--workdir",
            str(work),
            "--log",
            str(root / "serve-live.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_clean_env(MEDSEG_LABEL_PYTHON=str(python)),
        cwd=installed["cwd"],
    ) as proc:
        try:
            deadline, lines, url = time.monotonic() + 600, [], None
            while time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()
                lines.append(line)
                if match := re.search(r"ready at (http://127\.0\.0\.1:\d+)/", line):
                    url = match.group(1)
                    break
            log = (root / "serve-live.log").read_text() if (root / "serve-live.log").exists() else ""
            assert url, "".join(lines)[-3000:] + log[-3000:]
            # the server imports the installed package, through the workdir's link folder
            assert (work / "python" / "medseg").resolve().is_relative_to(installed["venv"].resolve())
            image = fold_cases(hippocampus_dir, 0)[0]
            response = call("POST", f"{url}/infer/{BUNDLE.name}?image={image}&output=json", timeout=300)
            assert response.status == 200, response.detail
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=90) == 0
