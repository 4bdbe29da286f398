"""``medseg node`` option checks: routes, destinations and bundles are refused with what to do, before
anything listens (the node itself runs in tests/node/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli.main import main
from medseg.node.service import Destination, DicomWebDestination, parse_destination


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "medseg node needs --bundle or --route"),
        (["--route", "Modality=MR"], "--route must be CONDITIONS:BUNDLE"),
        (["--route", "Modalty=MR:hippocampus_unet3d"], "'Modalty' is not a DICOM keyword"),
        (["--bundle", "no_such_bundle"], "--bundle no_such_bundle: no such bundle folder"),
        (
            ["--bundle", "hippocampus_unet3d", "--destination", "PACS@host"],
            "--destination must be AET@HOST:PORT",
        ),
        (
            ["--bundle", "hippocampus_unet3d", "--destination", "http://:80/x"],
            "--destination URL must be a DICOMweb",
        ),
    ],
)
def test_node_options_are_checked_before_listening(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    destination = [] if "--destination" in extra else ["--destination", "PACS@127.0.0.1:11112"]
    code = main(["node", "--workdir", str(tmp_path), "--port", "11112", *destination, *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_destinations_are_an_ae_or_a_dicomweb_root() -> None:
    assert parse_destination("ORTHANC@pacs.lan:4242") == Destination("ORTHANC", "pacs.lan", 4242)
    assert parse_destination("http://pacs.lan:8042/dicom-web/") == DicomWebDestination(
        "http://pacs.lan:8042/dicom-web"
    )
    assert str(parse_destination("https://pacs.lan/dicom-web")) == "https://pacs.lan/dicom-web"
