#!/usr/bin/env bash
# Install what the serving and DICOM SEG tests need (tests/test_serve*.py, tests/test_orthanc*.py,
# dciodvfy for tests/test_segment*.py) on a Debian
# machine, as root. Idempotent and fast when everything is there already:
#   * Debian packages: orthanc, orthanc-dicomweb (imaging server), util-linux (unshare), iproute2 (ip),
#     chromium and chromium-driver (headless browser for OHIF);
#   * the MONAI Label venv (workflows/label_venv.sh): reused from ~/.cache/medseg/label-venv-<hash>
#     when its requirements did not change; the first build takes a few minutes and about 8 GB.
# CI: run it before `make test` (e.g. in .ci/run); set MEDSEG_LABEL_VENV to keep the venv elsewhere.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$SECONDS

need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)  # DICOM validator for the SEG tests
# headless browser of tests/serve/test_ohif.py (OHIF); Debian's driver matches Debian's browser
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # a self-signed certificate for the HTTPS login test
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup_ci: need root to install ${need[*]}" >&2
        exit 1
    fi
    echo "setup_ci: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    nice -n 19 apt-get update -qq
    nice -n 19 apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

nice -n 19 bash "$REPO/workflows/label_venv.sh" >/dev/null
# a reused venv is checked too: every module the server imports must import there
venv="$(nice -n 19 bash "$REPO/workflows/label_venv.sh" --check | tail -n 1)"
echo "setup_ci: ready in $((SECONDS - start)) s (Orthanc $(Orthanc --version 2>/dev/null | head -n 1 | awk '{print $2}'), label venv $venv)" >&2
