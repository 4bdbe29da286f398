"""The CLI's logging: MONAI's missing-GPU-decoder notice is debug output, not a warning to users."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = (
    "import sys; from medseg.cli.main import configure_logging; configure_logging(sys.argv[1] == 'verbose'); "
    "import logging; logging.getLogger('monai.data.nvimgcodec_pydicom_plugin').warning("
    "'nvImageCodec is not available; skipping pydicom decoder plugin registration.')"
)


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_nvimagecodec_notice_is_debug_only(mode: str) -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    if mode == "quiet":
        assert "nvImageCodec" not in result.stderr
    else:
        assert "DEBUG monai.data.nvimgcodec_pydicom_plugin: nvImageCodec is not available" in result.stderr
