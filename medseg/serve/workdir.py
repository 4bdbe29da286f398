"""The working folder of ``medseg serve``: served bundle copies and a datastore mirrored from the studies.

Layout of ``WORKDIR``::

    app/                   the MONAI Label app (main.py from medseg/serve/label/recipe/)
    app/model/<bundle>/    served copy of a bundle folder (configs, docs, LICENSE, models/model.pt);
                           /train adds models/model-ftNNN-<time>.pt and never touches model.pt
    datastore/             MONAI Label local datastore: images (symbolic links to the studies, or
                           NIfTI converted from their DICOM series) and labels/final/ (copies)
    dicomweb-cache/        cache of series fetched from a DICOMweb server
    python/                the medseg package the server imports (see medseg.serve.launcher)
    serve.json             what was prepared last (bundles, studies, counts, skipped inputs)

Nothing is ever written into the studies source: images are linked (the server's datastore
replaces a link rather than writing through it), labels are copied, DICOM series are converted
into the workdir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medseg import paths
from medseg.bundle.core import Bundle, open_bundle
from medseg.bundle.loader import is_ensemble, weight_files
from medseg.errors import BundleError, ConfigError, InputError, MedsegError
from medseg.io.atomic import atomic_copy
from medseg.io.formats import SELF_CONTAINED_SUFFIXES, image_suffix, strip_image_suffix

__all__ = [
    "PreparedWorkdir",
    "MirrorReport",
    "default_workdir",
    "discover_bundles",
    "select_bundles",
    "is_dicomweb_url",
    "mirror_studies",
    "prepare_workdir",
    "sync_bundle",
    "file_sha256",
]

logger = logging.getLogger(__name__)

APP_TEMPLATE = Path(__file__).resolve().parent / "label" / "recipe" / "main.py"
SHIPPED_BUNDLE_PARTS = ("configs", "docs", "LICENSE")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_workdir() -> Path:
    """``$XDG_CACHE_HOME/medseg/serve`` (``~/.cache/medseg/serve``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "medseg" / "serve"


def is_dicomweb_url(studies: str | os.PathLike | None) -> bool:
    return isinstance(studies, str) and studies.startswith(("http://", "https://"))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discover_bundles(bundles_root: str | os.PathLike, names: list[str] | None = None) -> list[Bundle]:
    """The bundles to serve: ``names`` under ``bundles_root``, or every bundle folder there.

    Raises:
        BundleError: a named bundle is missing, or there is none at all.
    """
    root = Path(bundles_root)
    if names:
        bundles = []
        for name in names:
            if not _ID_UNSAFE.sub("", name) == name or name in (".", ".."):
                raise ConfigError(f"bundle name {name!r} must be a folder name under {root}")
            path = root / name
            if not (path / "configs" / "metadata.json").is_file():
                available = ", ".join(b.name for b in discover_bundles(root)) if root.is_dir() else "none"
                raise BundleError(f"no bundle {name!r} in {root} (available: {available})")
            bundles.append(open_bundle(path))
        return bundles
    if not root.is_dir():
        raise BundleError(f"bundle folder {root} not found; give --bundles-dir")
    found = [open_bundle(p) for p in sorted(root.iterdir()) if (p / "configs" / "metadata.json").is_file()]
    if not found:
        raise BundleError(f"no MONAI bundle (folder with configs/metadata.json) in {root}")
    bundles = [b for b in found if _trained(b)]
    for bundle in found:
        if not _trained(bundle):
            logger.warning("not serving bundle %s: it has no models/model.pt yet", bundle.name)
    if not bundles:
        raise BundleError(f"no bundle in {root} has trained weights (models/model.pt) to serve")
    return bundles


def select_bundles(
    bundles: list[str] | None = None, bundles_dir: str | os.PathLike | None = None
) -> list[Bundle]:
    """The bundles ``medseg serve`` serves (model names are their folder names).

    Args:
        bundles: bundle folder paths or bundle names; a name is looked up in ``bundles_dir`` when
            given, else where :func:`medseg.paths.resolve_bundle_path` looks. None: every bundle
            with weights in ``bundles_dir`` (default :func:`medseg.paths.bundles_dir`).
        bundles_dir: a folder of bundle folders.

    Raises:
        BundleError: a bundle is not found, two have the same folder name, or there is none.
        ConfigError: no bundle is named and no bundles folder is given or found.
    """
    if not bundles:
        root = Path(bundles_dir) if bundles_dir is not None else paths.bundles_dir()
        if root is None:
            raise ConfigError(
                "no bundles folder found (looked in $MEDSEG_BUNDLES_DIR, beside the medseg source checkout, "
                f"and for bundles/ in {Path.cwd()} and its parents): give --bundles PATH [PATH ...] or "
                f"--bundles-dir DIR, or set {paths.BUNDLES_ENV}"
            )
        return discover_bundles(root)
    selected: list[Bundle] = []
    for item in bundles:
        path = Path(item)
        if (path / "configs" / "metadata.json").is_file():
            selected.append(open_bundle(path.resolve()))
        elif bundles_dir is not None and len(path.parts) == 1:
            selected.extend(discover_bundles(bundles_dir, [item]))
        else:
            found = paths.resolve_bundle_path(item)
            if found is None or not (found / "configs" / "metadata.json").is_file():
                searched = ", ".join(str(d) for d in paths.bundle_search_dirs()) or "no bundles folder found"
                raise BundleError(
                    f"no bundle {item!r}: not a bundle folder (with configs/metadata.json) and not a bundle "
                    f"name in {searched}; give the bundle's folder path, or --bundles-dir DIR"
                )
            selected.append(open_bundle(found))
    names = [b.name for b in selected]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BundleError(
            f"two bundles are named {', '.join(twice)} (model names are folder names); serve one"
        )
    return selected


def sync_bundle(bundle: Bundle, model_root: Path) -> Path:
    """Make ``model_root/<bundle>`` a served copy of ``bundle``; returns its folder.

    Configs, docs and LICENSE are replaced by the shipped ones; ``models/model.pt`` is copied (not
    linked, so nothing the server does can reach the shipped file) when it differs. Fine-tuned
    versions (``models/model-ft*.pt``) from earlier runs are kept.

    Raises:
        BundleError: the bundle has no ``models/model.pt``.
    """
    if not _trained(bundle):
        raise BundleError(
            f"bundle {bundle.name} has no models/model.pt to serve; train it first "
            f"(medseg train {bundle.root}) or leave it out with --bundles"
        )
    dest = model_root / bundle.name
    if is_ensemble(bundle):  # inference only: its record and one weights file per member
        return _sync_ensemble(bundle, dest)
    (dest / "models").mkdir(parents=True, exist_ok=True)
    for part in SHIPPED_BUNDLE_PARTS:
        src = bundle.root / part
        target = dest / part
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if src.is_dir():
            shutil.copytree(src, target)
        elif src.is_file():
            shutil.copy2(src, target)
    served = dest / "models" / "model.pt"
    shipped_hash = file_sha256(bundle.weights)
    if not served.is_file() or file_sha256(served) != shipped_hash:
        atomic_copy(bundle.weights, served)
    (dest / "medseg-source.json").write_text(
        json.dumps(
            {"source": str(bundle.root), "model_sha256": shipped_hash, "version": bundle.version}, indent=2
        )
    )
    return dest


def _trained(bundle: Bundle) -> bool:
    return all(path.is_file() for path in weight_files(bundle))


def _sync_ensemble(bundle: Bundle, dest: Path) -> Path:
    """A served copy of an ensemble bundle: configs, docs, LICENSE, plans/ and the members' weights."""
    if dest.exists():
        shutil.rmtree(dest)
    for part in (*SHIPPED_BUNDLE_PARTS, "plans"):
        src = bundle.root / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.is_file():
            shutil.copy2(src, dest / part)
    for path in weight_files(bundle):
        target = dest / path.relative_to(bundle.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(path, target)
    (dest / "medseg-source.json").write_text(
        json.dumps({"source": str(bundle.root), "version": bundle.version, "ensemble": True}, indent=2)
    )
    return dest


@dataclass
class MirrorReport:
    """What :func:`mirror_studies` put into the datastore."""

    images: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _image_id(name: str) -> str:
    return strip_image_suffix(name)


def _image_suffix(name: str) -> str | None:
    """The ending of an image file that can be linked into the datastore alone (not ``.nhdr``)."""
    suffix = image_suffix(name)
    return suffix if suffix in SELF_CONTAINED_SUFFIXES else None


def _place_link(src: Path, dest: Path) -> None:
    if dest.is_symlink() or dest.exists():
        if dest.is_symlink() and os.readlink(dest) == str(src):
            return
        dest.unlink()
    os.symlink(src, dest)


def _place_copy(src: Path, dest: Path) -> None:
    if dest.is_symlink():
        dest.unlink()
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and file_sha256(dest) == file_sha256(src):
        return
    atomic_copy(src, dest)


def _is_msd_task(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() and (folder / "imagesTr").is_dir()


def _mirror_msd(src: Path, datastore: Path, report: MirrorReport) -> None:
    labels_dir = datastore / "labels" / "final"
    for sub in ("imagesTr", "imagesTs"):
        folder = src / sub
        if not folder.is_dir():
            continue
        for image in sorted(folder.iterdir()):
            suffix = _image_suffix(image.name)
            if suffix is None or image.name.startswith("."):
                continue
            image_id = _image_id(image.name)
            _place_link(image.resolve(), datastore / f"{image_id}{suffix}")
            report.images.append(image_id)
            label = src / "labelsTr" / image.name
            if sub == "imagesTr" and label.is_file():
                labels_dir.mkdir(parents=True, exist_ok=True)
                # a copy, never a link: a label saved from a client replaces this file in place
                _place_copy(label, labels_dir / f"{image_id}{suffix}")
                report.labels.append(image_id)


def _mirror_folder(src: Path, datastore: Path, report: MirrorReport) -> None:
    from medseg.io import load_image, save_nifti
    from medseg.io.formats import discover

    found = discover(src)
    report.skipped.extend(found.skipped)
    for item in found.images:
        if item.error is not None:
            report.skipped.append(item.error)
            continue
        if item.self_contained:
            _place_link(item.path.resolve(), datastore / f"{item.id}{item.suffix}")
            report.images.append(item.id)
            continue
        # a DICOM series or a detached NRRD header (.nhdr): converted to NIfTI in the workdir
        out = datastore / f"{item.id}.nii.gz"
        stamp = datastore / ".converted" / f"{item.id}.json"
        key = {
            "series_uid": item.series_uid,
            "files": len(item.files),
            "mtime": max((os.path.getmtime(f) for f in item.files if os.path.exists(f)), default=0.0),
        }
        if out.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
            report.images.append(item.id)
            report.converted.append(item.id)
            continue
        rel = item.path.relative_to(src) if item.path != src else Path(src.name)
        try:
            image = load_image(item.path, series_uid=item.series_uid, dtype=None)
        except MedsegError as exc:
            report.skipped.append(f"{rel}: {exc}")
            continue
        save_nifti(image, out)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(json.dumps(key))
        report.images.append(item.id)
        report.converted.append(item.id)


def mirror_studies(studies: str | os.PathLike, datastore: str | os.PathLike) -> MirrorReport:
    """Mirror a local studies folder into a MONAI Label datastore folder without writing into it.

    * an MSD task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``): images are linked, labels
      copied into ``labels/final/`` so that ``/train`` has data;
    * any other folder: NIfTI/NRRD files are linked, DICOM series and detached NRRD headers
      (``.nhdr``) are validated and converted to NIfTI; ids as :func:`medseg.io.formats.discover`
      gives them. Series that fail validation are skipped and reported.

    Links and converted files of earlier runs that no longer match the source are removed.

    An empty folder gives an empty datastore (images can be uploaded from a client).

    Raises:
        InputError: the folder does not exist.
    """
    src = Path(studies).resolve()
    store = Path(datastore)
    if not src.is_dir():
        raise InputError(f"studies folder {src} does not exist; give a folder of images or a DICOMweb URL")
    if store.resolve() == src or src in store.resolve().parents:
        raise ConfigError(f"the workdir datastore {store} must not lie inside the studies folder {src}")
    store.mkdir(parents=True, exist_ok=True)
    report = MirrorReport()
    if _is_msd_task(src):
        _mirror_msd(src, store, report)
    else:
        _mirror_folder(src, store, report)
    if not report.images:
        # an empty folder is a valid start: clinicians upload images from 3D Slicer (PUT /datastore/image)
        logger.info("no image in %s yet: the datastore starts empty (upload images from a client)", src)
    # drop what an earlier run mirrored and the source no longer has: our links and conversions only,
    # never a file a client added through the API
    keep = set(report.images)
    for entry in store.iterdir():
        suffix = _image_suffix(entry.name)
        if not suffix or _image_id(entry.name) in keep:
            continue
        stamp = store / ".converted" / f"{_image_id(entry.name)}.json"
        if entry.is_symlink():
            entry.unlink()
        elif entry.is_file() and stamp.is_file():
            entry.unlink()
            stamp.unlink()
    return report


@dataclass
class PreparedWorkdir:
    """What :func:`prepare_workdir` made; ``studies`` is what the server gets (folder or URL)."""

    root: Path
    app_dir: Path
    studies: str
    bundles: list[str]
    report: MirrorReport | None = None

    def to_json(self) -> dict:
        out = {
            "root": str(self.root),
            "app_dir": str(self.app_dir),
            "studies": self.studies,
            "bundles": self.bundles,
        }
        if self.report is not None:
            out["report"] = asdict(self.report)
        return out


def prepare_workdir(
    workdir: str | os.PathLike,
    studies: str | os.PathLike | None,
    bundles: list[Bundle],
) -> PreparedWorkdir:
    """Create or refresh the workdir: app, served bundle copies, datastore.

    Args:
        workdir: the working folder (created when missing).
        studies: a local folder, a DICOMweb URL, or None for an empty datastore in the workdir.
        bundles: the bundles to serve.
    """
    root = Path(workdir).resolve()
    app_dir = root / "app"
    model_root = app_dir / "model"
    model_root.mkdir(parents=True, exist_ok=True)
    if not APP_TEMPLATE.is_file():
        raise ConfigError(
            f"MONAI Label app template {APP_TEMPLATE} is missing from this medseg installation; reinstall medseg"
        )
    shutil.copy2(APP_TEMPLATE, app_dir / "main.py")
    served = [sync_bundle(b, model_root).name for b in bundles]
    for stale in model_root.iterdir():
        if stale.is_dir() and stale.name not in served:
            # bundles not served this time stay on disk (their fine-tuned versions too), unlisted
            logger.info("not serving %s this time (left in %s)", stale.name, stale)
    report = None
    if is_dicomweb_url(studies):
        studies_for_server = str(studies).rstrip("/")
        (root / "dicomweb-cache").mkdir(exist_ok=True)
    else:
        datastore = root / "datastore"
        if studies is None:
            datastore.mkdir(exist_ok=True)
        else:
            report = mirror_studies(studies, datastore)
        studies_for_server = str(datastore)
    prepared = PreparedWorkdir(
        root=root, app_dir=app_dir, studies=studies_for_server, bundles=served, report=report
    )
    state = prepared.to_json()
    state["source"] = None if studies is None else str(studies)
    state["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    (root / "serve.json").write_text(json.dumps(state, indent=2))
    return prepared
