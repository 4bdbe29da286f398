"""The two environments of ``medseg serve`` stay apart, and serving needs no source checkout.

* only :mod:`medseg.serve.label` imports ``monailabel`` (checked on the source, no venv needed);
* importing the ASGI module starts no process and patches nothing (in the MONAI Label venv);
* the label-venv recipe and app template ship inside the package;
* the server imports the caller's medseg through a link folder (never a whole site-packages);
* ``medseg serve`` takes bundle folder paths as well as names.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, hippocampus_bundles, label_python

import medseg
from medseg.errors import BundleError, ConfigError
from medseg.serve.launcher import LABEL_VENV_SCRIPT, medseg_pythonpath
from medseg.serve.workdir import APP_TEMPLATE, select_bundles

PACKAGE = Path(medseg.__file__).resolve().parent
LABEL_PACKAGE = PACKAGE / "serve" / "label"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_the_label_subpackage_imports_monailabel():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if LABEL_PACKAGE in path.parents:
            continue
        if any(m == "monailabel" or m.startswith("monailabel.") for m in _imported_modules(path)):
            offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert not offenders, f"only medseg/serve/label may import monailabel: {offenders}"
    # and the subpackage does use it (the check would be vacuous otherwise)
    assert "monailabel.interfaces.app" in _imported_modules(LABEL_PACKAGE / "app.py")


def test_the_label_venv_recipe_and_app_template_ship_in_the_package():
    recipe = LABEL_PACKAGE / "recipe"
    assert LABEL_VENV_SCRIPT == recipe / "label_venv.sh" and LABEL_VENV_SCRIPT.is_file()
    assert (recipe / "requirements.txt").is_file() and (recipe / "constraints.txt").is_file()
    assert APP_TEMPLATE == recipe / "main.py"
    assert "from medseg.serve.label.app import MedsegLabelApp" in APP_TEMPLATE.read_text()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"medseg.serve.label" = ["recipe/*.sh", "recipe/*.txt", "recipe/*.py"]' in pyproject


def test_the_server_imports_the_callers_medseg_through_a_link_folder(tmp_path: Path):
    folder = medseg_pythonpath(tmp_path)
    assert folder == tmp_path / "python"
    assert (folder / "medseg").resolve() == PACKAGE
    # nothing else is importable from there (a whole site-packages would shadow the label venv's numpy)
    assert sorted(p.name for p in folder.iterdir()) == ["medseg", f"medseg-{medseg.__version__}.dist-info"]
    metadata = (folder / f"medseg-{medseg.__version__}.dist-info" / "METADATA").read_text()
    assert f"Version: {medseg.__version__}" in metadata
    assert medseg_pythonpath(tmp_path) == folder  # idempotent


def test_select_bundles_takes_paths_names_and_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    names = hippocampus_bundles()
    bundles_dir = REPO_ROOT / "bundles"
    by_path = select_bundles([str(bundles_dir / names[0])])
    assert [b.name for b in by_path] == names[:1]
    assert [b.name for b in select_bundles(names[:1], bundles_dir)] == names[:1]
    assert names[0] in [b.name for b in select_bundles(None, bundles_dir)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEG_BUNDLES_DIR", str(tmp_path / "none"))
    with pytest.raises(BundleError, match="no bundle 'nope'.*give the bundle's folder path"):
        select_bundles(["nope"])
    with pytest.raises(BundleError, match="two bundles are named"):
        select_bundles([str(bundles_dir / names[0]), str(bundles_dir / names[0])])
    monkeypatch.setattr("medseg.paths.bundles_dir", lambda: None)
    with pytest.raises(ConfigError, match="--bundles-dir DIR"):
        select_bundles(None)


@pytest.mark.slow
@pytest.mark.needs_label_venv
@pytest.mark.timeout(600)
def test_importing_the_asgi_module_starts_nothing(tmp_path: Path):
    python = label_python()
    script = """
import json, multiprocessing
from starlette.middleware.cors import CORSMiddleware
from medseg.serve.label import asgi
cors = [m.kwargs.get("allow_origins") for m in asgi.stock_app.user_middleware if m.cls is CORSMiddleware]
print(json.dumps({"pool": asgi._pool is not None, "children": len(multiprocessing.active_children()),
                  "cors": cors, "started": asgi._started}))
"""
    env = dict(os.environ, PYTHONPATH=str(medseg_pythonpath(tmp_path)))
    proc = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    # MONAI Label's stock CORS setting is untouched, no worker process exists until start-up
    assert state == {"pool": False, "children": 0, "cors": [["*"]], "started": False}
