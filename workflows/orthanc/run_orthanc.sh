#!/usr/bin/env bash
# Run Orthanc (Debian's orthanc + orthanc-dicomweb) with medseg's config in the foreground.
#
#   workflows/orthanc/run_orthanc.sh STORAGE_DIR [HTTP_PORT]
#
# DICOMweb root: http://127.0.0.1:HTTP_PORT/dicom-web (default port 8042). Orthanc cannot be told
# to listen on 127.0.0.1 only; "RemoteAccessAllowed": false makes it refuse other hosts, and the
# scripts and tests run it inside `unshare -n` (a network namespace holding only loopback).
# No user authentication. Research use only.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
storage="${1:?usage: run_orthanc.sh STORAGE_DIR [HTTP_PORT]}"
mkdir -p "$storage"
export MEDSEG_ORTHANC_STORAGE="$(cd "$storage" && pwd)"
export MEDSEG_ORTHANC_HTTP_PORT="${2:-8042}"
command -v Orthanc >/dev/null || { echo "Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb" >&2; exit 1; }
exec Orthanc "$here/orthanc.json"
