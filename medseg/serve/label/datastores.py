"""medseg's MONAI Label datastores: a local one that never writes outside itself or in place, and a
DICOMweb one that converts with medseg's strict loader (MONAI Label venv only).

* :class:`MedsegLocalDatastore`: every id and tag that becomes a file name is checked
  (:mod:`medseg.serve.names`) and every target path is resolved and checked to stay inside the
  datastore; images and labels are written atomically (a temporary file beside the target, then a
  rename: a reader - a client, a training run - sees the old file or the new one, never part of
  one), which also replaces a link into the mirrored studies instead of writing through it, so the
  studies folder is never written;
* :class:`MedsegDICOMWebDatastore` converts series with medseg's strict loader (no dcmqi download,
  no ITK conversion), stores final labels as DICOM SEGs written by medseg and reads them back with
  medseg's reader.

Written against monailabel 0.8.5; the local datastore overrides its base's ``add_image``,
``save_label`` and ``_update_datastore_file`` (re-check them on an upgrade), and the DICOMweb one
keeps the client and ``fetch_by_frame`` that its base keeps private.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelError, MONAILabelException

from medseg.bundle.core import open_bundle
from medseg.io.atomic import atomic_copy, atomic_write_text
from medseg.serve import names
from medseg.serve.names import inside, plain_name

__all__ = ["MedsegDICOMWebDatastore", "MedsegLocalDatastore"]

logger = logging.getLogger("medseg.serve.label.app")


class _SafeWrites:
    """Checked names, paths kept inside the datastore, atomic writes: the write side of
    monailabel 0.8.5's ``LocalDatastore`` (``add_image``, ``save_label``, the datastore's JSON file)."""

    def _target(self, folder: str, item_id: str, ext: str) -> Path:
        """Where an image or label file goes: a plain name in a folder that resolves inside the
        datastore (the file itself may be a link into the studies: it is replaced, not followed)."""
        plain_name(item_id, "image id")
        root = self._datastore.base_path or os.getcwd()
        os.makedirs(folder, exist_ok=True)
        return inside(root, os.path.relpath(folder, root)) / self._filename(item_id, ext)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        found_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or found_id
        name = self._filename(image_id, ext)
        dest = self._target(self._datastore.image_path(), image_id, ext)
        logger.info("adding image %s", image_id)
        with FileLock(self._lock_file):
            atomic_copy(image_filename, dest)  # replaces a link into the studies, never writes through it
            info = dict(image_info or {})
            info.update(ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        label_tag = names.label_tag(label_tag)
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        _, ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, ext)
        dest = self._target(self._datastore.label_path(label_tag), image_id, ext)
        logger.info("saving label of %s (tag %s)", image_id, label_tag)
        with FileLock(self._lock_file):
            atomic_copy(label_filename, dest)
            info = dict(label_info or {})
            info.update(ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        return image_id

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            payload = self._datastore.model_dump(exclude={"base_path"})
            atomic_write_text(self._datastore_config_path, json.dumps(payload, indent=2, default=str))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


class MedsegLocalDatastore(_SafeWrites, LocalDatastore):
    """Local datastore whose images may be links into the studies: names checked, writes atomic
    (a link is replaced, never written through)."""


class MedsegDICOMWebDatastore(_SafeWrites, DICOMWebDatastore):
    """DICOMweb datastore that converts series with medseg's strict loader and stores SEGs back.

    Args:
        client: the DICOMweb client (kept as :attr:`client`: monailabel 0.8.5 keeps it private).
        search_filter: QIDO-RS filter of the series listed as images.
        cache_path: where series are downloaded and converted.
        fetch_by_frame: fetch instances frame by frame (kept as :attr:`fetch_by_frame`).
        convert_to_nifti: as in :class:`DICOMWebDatastore`.
        seg_bundle_path: the served bundle whose label names and codes a submitted label's SEG
            carries (and whose names map a SEG's segments back to label values).
    """

    def __init__(
        self,
        client: Any,
        search_filter: dict[str, Any],
        cache_path: str | None = None,
        fetch_by_frame: bool = False,
        convert_to_nifti: bool = True,
        seg_bundle_path: str | None = None,
    ) -> None:
        self.seg_bundle_path = seg_bundle_path
        super().__init__(
            client=client,
            search_filter=search_filter,
            cache_path=cache_path,
            fetch_by_frame=fetch_by_frame,
            convert_to_nifti=convert_to_nifti,
        )
        self.client = client
        self.fetch_by_frame = fetch_by_frame

    def store_instances(self, paths: list[str]) -> None:
        """Store DICOM files (e.g. a SEG written for a request) on the DICOMweb server with STOW-RS."""
        import pydicom

        self.client.store_instances(datasets=[pydicom.dcmread(p) for p in paths])

    def _series_lock(self, image_id: str):
        """A lock on one series across threads and worker processes (a lock file beside it)."""
        from filelock import FileLock

        return FileLock(os.path.join(self._datastore.image_path(), f".{image_id}.lock"))

    def series_dir(self, image_id: str) -> str:
        """Folder of the downloaded instances of a series (fetched once, completely, on first use)."""
        from monailabel.datastore.utils.dicom import dicom_web_download_series

        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        with self._series_lock(image_id):
            if not os.path.isdir(image_dir) or not os.listdir(image_dir):
                # download beside it and rename: a failed or concurrent fetch never leaves half a series
                part = tempfile.mkdtemp(prefix=f".{image_id}.part-", dir=os.path.dirname(image_dir))
                try:
                    dicom_web_download_series(None, image_id, part, self.client, self.fetch_by_frame)
                    if os.path.isdir(image_dir):
                        shutil.rmtree(image_dir)
                    os.replace(part, image_dir)
                finally:
                    shutil.rmtree(part, ignore_errors=True)
        return image_dir

    # -- labels: DICOM SEG written by medseg, read back with medseg's reader (no dcmqi)
    def save_label(
        self,
        image_id: str,
        label_filename: str,
        label_tag: str,
        label_info: dict[str, Any],
        label_id: str = "",
    ) -> str:
        """Store a final label as a DICOM SEG on the DICOMweb server (STOW-RS) and keep it in the cache.

        The label (NIfTI on the image's grid, checked by :mod:`medseg.serve.label.labels`) becomes a
        SEG written by medseg with the bundle's label names and codes, referencing the source series;
        other tags (e.g. a client's drafts) stay in the local cache only, as in stock MONAI Label.
        """
        from medseg.serve.label.seg_output import label_file_to_seg

        self.get_image_uri(image_id)
        info = dict(label_info or {})
        if label_tag == DefaultLabelTag.FINAL:
            if not self.seg_bundle_path:
                raise MONAILabelException(
                    MONAILabelError.APP_INIT_ERROR, "no bundle to code the label's SEG with"
                )
            with tempfile.TemporaryDirectory(prefix="medseg-label-seg-") as tmp:
                seg_path = os.path.join(tmp, "label-seg.dcm")
                uids = label_file_to_seg(
                    label_filename,
                    self.series_dir(image_id),
                    seg_path,
                    bundle_path=self.seg_bundle_path,
                    corrected=True,
                )
                self.store_instances([seg_path])
            info["SeriesInstanceUID"] = uids["series_instance_uid"]
            logger.info(
                "label of %s stored on the DICOMweb server as SEG series %s",
                image_id,
                uids["series_instance_uid"],
            )
        return _SafeWrites.save_label(self, image_id, label_filename, label_tag, info)

    def _seg_labels(self) -> dict[str, str]:
        """The newest label SEG series of each listed image series: ``{image series uid: SEG series uid}``.

        A SEG is a label when it references a listed series and is not a model's output (medseg's
        inference SEGs are marked AUTOMATIC; those are results, not ground truth).
        """
        from pydicom.dataset import Dataset

        images = set(self.list_images())
        found: dict[str, tuple[str, str]] = {}
        for item in self.client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(item)
            study, series = str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID)
            meta = Dataset.from_json(self.client.retrieve_series_metadata(study, series)[0])
            referenced = meta.get("ReferencedSeriesSequence")
            if not referenced:
                continue
            image = str(referenced[0].SeriesInstanceUID)
            algorithm_types = {
                str(s.get("SegmentAlgorithmType", "")) for s in meta.get("SegmentSequence", [])
            }
            if image not in images or (
                str(meta.get("Manufacturer", "")) == "medseg" and algorithm_types == {"AUTOMATIC"}
            ):
                continue
            stamp = f"{meta.get('ContentDate', '') or meta.get('SeriesDate', '')}{meta.get('ContentTime', '') or meta.get('SeriesTime', '')}"
            if image not in found or stamp >= found[image][0]:
                found[image] = (stamp, series)
        return {image: series for image, (_, series) in found.items()}

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(self._seg_labels())

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if label_tag != DefaultLabelTag.FINAL or not image_id:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        return self._label_from_seg(image_id, label_id)

    def _label_from_seg(self, image_id: str, seg_uid: str) -> str:
        """The label map of a SEG series as NIfTI on its image's grid, in the cache (converted once)."""
        from monailabel.datastore.utils.dicom import dicom_web_download_series

        from medseg.serve.label.labels import as_image_nifti, seg_to_labelmap

        final = DefaultLabelTag.FINAL.value
        label_nii = os.path.realpath(os.path.join(self._datastore.label_path(final), f"{image_id}.nii.gz"))
        current = LocalDatastore.get_label_info(self, image_id, final) if os.path.exists(label_nii) else {}
        if os.path.exists(label_nii) and current.get("SeriesInstanceUID") == seg_uid:
            return label_nii
        image_nii = self.get_image_uri(image_id)
        with tempfile.TemporaryDirectory(prefix="medseg-seg-") as tmp:
            dicom_web_download_series(None, seg_uid, tmp, self.client, self.fetch_by_frame)
            seg_files = sorted(str(p) for p in Path(tmp).rglob("*") if p.is_file())
            names = open_bundle(self.seg_bundle_path).labels if self.seg_bundle_path else {}
            label = seg_to_labelmap(seg_files[0], self.series_dir(image_id), names)
            converted = as_image_nifti(label, image_nii, os.path.join(tmp, "label.dcm"))
            _SafeWrites.save_label(self, image_id, converted, final, {"SeriesInstanceUID": seg_uid})
        logger.info("label of %s read from SEG series %s", image_id, seg_uid)
        return label_nii

    def _download_labeled_data(self):
        labels = self._seg_labels()
        final = DefaultLabelTag.FINAL.value
        for stale in set(LocalDatastore.get_labeled_images(self)) - set(labels):
            logger.info("label of %s is no longer on the DICOMweb server: removed from the cache", stale)
            LocalDatastore.remove_label(self, stale, final)
        for image_id, seg_uid in labels.items():
            self._label_from_seg(image_id, seg_uid)

    def get_image_uri(self, image_id: str) -> str:
        from medseg.io import load_image, save_nifti

        image_dir = self.series_dir(image_id)
        image_nii_gz = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        with self._series_lock(image_id):
            if not os.path.exists(image_nii_gz):
                image = load_image(image_dir, series_uid=image_id, dtype=None)
                with tempfile.TemporaryDirectory(prefix="medseg-dicomweb-") as tmp:
                    converted = os.path.join(tmp, f"{image_id}.nii.gz")
                    save_nifti(image, converted)
                    _SafeWrites.add_image(self, image_id, converted, self._dicom_info(image_id))
        return image_nii_gz
