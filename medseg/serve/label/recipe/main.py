"""MONAI Label app of medseg: serves the bundles copied under ./model/ (see medseg.serve.label.app).

`medseg serve` copies this file into its workdir's app folder; MONAI Label finds the app class
(a direct subclass of MONAILabelApp) among this module's members.
"""

from medseg.serve.label.app import MedsegLabelApp

__all__ = ["MedsegLabelApp"]
