"""The MONAI Label app that serves medseg bundles (imported in the MONAI Label venv only).

The app template ``medseg/serve/label/recipe/main.py`` (copied into the workdir by
:func:`medseg.serve.workdir.prepare_workdir`) imports :class:`MedsegLabelApp`; MONAI Label finds it
there as the app class. Differences from MONAI Label's stock ``monaibundle`` app:

* models are the bundle folders under ``<app>/model/`` (``--conf models a,b`` selects some);
  nothing is downloaded from a model zoo;
* its parts live in MONAI Label's shape, one module each: the inference task
  (:mod:`medseg.serve.label.infer`), the training task (:mod:`medseg.serve.label.train`) and the
  datastores (:mod:`medseg.serve.label.datastores`); this module only assembles them.

Written against monailabel 0.8.5. Where its classes expose no public accessor (the task tables
of the app, the DICOMweb client of the datastore) this module wraps them, in the adapter methods
of :class:`MedsegLabelApp` (``infer_names``, ``trainer_names``, ``infer_task``) and
:class:`MedsegDICOMWebDatastore` (``client``, ``fetch_by_frame``, ``store_instances``); the ASGI app
and the inference workers use only those.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import medseg
from medseg.bundle.core import open_bundle
from medseg.bundle.loader import is_ensemble
from medseg.serve.label.activelearning import Disagreement
from medseg.serve.label.datastores import MedsegDICOMWebDatastore, MedsegLocalDatastore
from medseg.serve.label.infer import MedsegInferTask, latest_weights, resolve_weights, weight_versions
from medseg.serve.label.interactive import infer_task_class
from medseg.serve.label.train import MedsegTrainTask
from medseg.serve.label.versions import VersionStore

__all__ = [
    "MedsegLabelApp",
    "MedsegInferTask",
    "MedsegTrainTask",
    "MedsegLocalDatastore",
    "MedsegDICOMWebDatastore",
    "weight_versions",
    "latest_weights",
    "resolve_weights",
]

logger = logging.getLogger(__name__)


class MedsegLabelApp(MONAILabelApp):
    """Serves every bundle under ``<app>/model/`` (or those of ``--conf models a,b``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = Path(app_dir) / "model"
        available = (
            sorted(p.name for p in self.model_dir.iterdir() if (p / "configs" / "metadata.json").is_file())
            if self.model_dir.is_dir()
            else []
        )
        wanted = [m.strip() for m in conf.get("models", "").split(",") if m.strip()]
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"no bundle {', '.join(unknown)} under {self.model_dir} (available: {', '.join(available) or 'none'})",
            )
        self.bundle_names = wanted or available
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medseg",
            description="medseg MONAI bundles (research use only, not for diagnosis)",
            version=medseg.__version__,
        )

    # adapter: monailabel 0.8.5 keeps the app's tasks in `_infers` / `_trainers` and offers no public
    # accessor by name (MONAILabelApp.info() builds every task's info); the ASGI app and the
    # inference workers go through these three methods only
    def infer_names(self) -> list[str]:
        """Names of the served models (bundles with inference configs and weights)."""
        return sorted(self._infers)

    def trainer_names(self) -> list[str]:
        """Names of the models that ``POST /train/{model}`` can fine-tune."""
        return sorted(self._trainers)

    def infer_task(self, name: str) -> MedsegInferTask | None:
        """The inference task of a served model, or None for an unknown name."""
        task = self._infers.get(name)
        return task if isinstance(task, MedsegInferTask) else None

    def label_names(self) -> dict[int, str]:
        """Label values and names of the served bundles (the first bundle names a shared value)."""
        names: dict[int, str] = {}
        for name in self.bundle_names:
            for value, label in open_bundle(self.model_dir / name).labels.items():
                names.setdefault(value, label)
        return names or {0: "background"}

    def label_values(self) -> set[int]:
        """Values a submitted label may hold: those of the served bundles, background included."""
        return set(self.label_names()) | {0}

    def version_store(self, name: str) -> VersionStore:
        """The weights versions of a served model.

        Raises:
            KeyError: not a served model (the message names the served ones).
        """
        if name not in self.bundle_names:
            raise KeyError(
                f"unknown model {name!r}; this server has: {', '.join(self.bundle_names) or 'none'}"
            )
        return VersionStore(self.model_dir / name)

    def init_infers(self):
        infers = {}
        for name in self.bundle_names:
            # an interactive bundle is MONAI Label's DeepEdit type (medseg.serve.label.interactive)
            task = infer_task_class(str(self.model_dir / name))(str(self.model_dir / name), self.conf)
            if task.is_valid():
                infers[name] = task
            else:
                logger.error("bundle %s cannot be served: no inference config or weights", name)
        return infers

    def init_trainers(self):
        trainers = {}
        for name in self.bundle_names:
            if is_ensemble(open_bundle(self.model_dir / name)):
                continue  # an ensemble is retrained member by member (medseg train --cv), not here
            task = MedsegTrainTask(str(self.model_dir / name), self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self):
        # "disagreement" is served by medseg's route (medseg.serve.label.asgi): it runs the ensemble's
        # members in the inference workers; listed here so that /info/ and 3D Slicer offer it
        return {"random": Random(), "first": First(), "disagreement": Disagreement()}

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return MedsegLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _init_dicomweb_datastore(self):
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.datastore.dicom import DICOMwebClientX

        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return MedsegDICOMWebDatastore(
            seg_bundle_path=str(self.model_dir / self.bundle_names[0]) if self.bundle_names else None,
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=cache_path or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=True,
        )

    def _download_dcmqi_tools(self):
        # DICOM SEG is written with highdicom (medseg.serve.label.seg_output); nothing to download
        return None
