"""OHIF in a real browser: headless Chromium opens ``/ohif/`` of ``medseg serve`` on an Orthanc datastore.

MONAI Label ships OHIF v3 at ``/ohif/``; it reads studies through the server's DICOMweb proxy
(``/proxy/dicom/qido|wado`` -> the datastore's DICOMweb root). This script checks what a clinician
sees, in Debian's Chromium driven by selenium (chromedriver), and keeps a screenshot of each stage:

1. Orthanc starts and a real DICOM series is uploaded (as ``roundtrip.py`` does);
2. the MONAI Label server of ``medseg serve`` starts on ``http://127.0.0.1:8042/dicom-web``, with a
   users file (``medseg serve --users``) when this medseg has the login: then the browser first
   finds ``/ohif/`` closed and logs in on the login page (an HttpOnly, SameSite=Strict cookie);
3. the study list at ``/ohif/`` lists the study (``01-study-list.png``);
4. the viewer opens it and draws the series with WebGL (``02-viewer.png``);
5. medseg segments the series and stores the SEG (``/infer/<bundle>?output=dicom_seg``, ``store``);
6. the viewer lists the SEG series next to the image series (``03-seg-listed.png``), and the SEG loads
   with the bundle's segments in the segmentation panel (``04-seg-loaded.png``).

With ``--check clicks`` (an interactive bundle, served as MONAI Label's ``deepedit`` type) steps 4-6
are instead the click correction of OHIF's *MONAI Label* mode (:func:`correct_with_click`): the mode's
MONAI Label panel connects to the server, *Point Prompts* runs the model without clicks, a click
placed with its point tool (``ProbeMONAILabel``) runs it again, and the check is that the request
carried that click at the voxel medseg has at the clicked position and that the mask, the server's
answer and what OHIF shows, changed (``10-point-prompts.png`` ... ``13-corrected.png``).

Orthanc cannot bind to loopback only, so run it inside a private network namespace; a PID namespace
as well ends every process it started (Orthanc, server, chromedriver, Chromium) when it ends::

    unshare -n -p -f --kill-child --mount-proc -- bash -c 'ip link set lo up && exec \
        .venv/bin/python workflows/orthanc/ohif_browser.py --workdir /tmp/ohif --report /tmp/ohif/report.json'

Headless Chromium draws OHIF's viewports with software WebGL (SwiftShader) and, on a closed
network, must not try to reach Google's services. Exits non-zero with a message on the first failed
check; writes a JSON report (steps, timings, screenshot files).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from roundtrip import (  # noqa: E402 - also puts the repository and workflows/ on sys.path
    REPO,
    Failed,
    StepLog,
    call,
    check,
    default_series,
    run_and_report,
    start_orthanc,
    stop_process_group,
    upload_series,
    wait_http,
)

from medseg.bundle.core import open_bundle  # noqa: E402
from medseg.serve.launcher import LabelServer, find_label_python  # noqa: E402
from medseg.serve.workdir import discover_bundles, prepare_workdir  # noqa: E402

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "Credentials",
    "Session",
    "api_headers",
    "chromium_options",
    "click_voxel",
    "connect_monai_label",
    "correct_with_click",
    "http_labels",
    "install_infer_hook",
    "login",
    "login_available",
    "missing_browser",
    "nrrd_labels",
    "open_study_list",
    "open_viewer",
    "place_click",
    "run",
    "run_point_prompts",
    "server_credentials",
    "show_seg",
    "start_browser",
    "store_seg",
    "viewport_pixels",
]

# Debian's packages (chromium, chromium-driver); chromedriver must match the browser's version, so
# selenium's own driver download (which needs the internet) is never used
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")

# Flags for headless Chromium on a CI machine: software WebGL (OHIF's viewports need WebGL, and
# --disable-gpu would take it away), no sandbox (runs as root in CI), and nothing that calls home
# (the machine's network is closed: component updates, sync, QUIC probes would only stall).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--no-first-run",
    "--no-default-browser-check",
    "--password-store=basic",
    "--window-size=1600,1000",
)


@dataclass(frozen=True)
class Credentials:
    """A user of the server's login, for the browser's login step."""

    username: str
    password: str


def missing_browser() -> str | None:
    """Why the browser test cannot run here (Chromium, chromedriver or selenium missing), or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e .[dev])")
    if missing:
        return f"{', '.join(missing)} not installed: run 'sudo bash workflows/setup_ci.sh'"
    return None


def chromium_options(user_data_dir: Path, binary: Path = CHROMIUM):
    """Selenium options for headless Debian Chromium with software WebGL and a fresh profile.

    Args:
        user_data_dir: an empty folder for the profile (no state from an earlier run).
        binary: the Chromium executable.
    """
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = str(binary)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingOptions", {"browser": "ALL"})
    return options


@contextlib.contextmanager
def start_browser(profile: Path, log: Path, page_timeout: float = 120) -> Iterator[Any]:
    """Chromium driven by Debian's chromedriver (never selenium's downloader); quit on exit.

    Args:
        profile: a fresh user-data folder.
        log: chromedriver's log file.
        page_timeout: seconds a page load may take.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(service=service, options=chromium_options(profile))
    try:
        driver.set_page_load_timeout(page_timeout)
        driver.set_script_timeout(30)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()  # ends Chromium and chromedriver
        with contextlib.suppress(Exception):
            service.stop()


# --- the login step -------------------------------------------------------------------------------
# The login of ``medseg serve --users`` (medseg.serve.users / medseg.serve.access): with users, every
# route, /ohif/ and the DICOMweb proxy included, answers 401 without a token; browsers get one as the
# session cookie that the login page sets (OHIF sends no Authorization header).
LOGIN_PAGE = "/auth/login"
LOGIN_FIELDS = ("username", "password")
SESSION_COOKIE = "medseg_session"
BROWSER_USER = "ohif-annotator"  # annotator: reads studies in OHIF, and may infer and store a SEG


def login_available() -> bool:
    """True when this medseg has the local user store of ``medseg serve --users``."""
    return importlib.util.find_spec("medseg.serve.users") is not None


def server_credentials(workdir: Path) -> tuple[Credentials | None, dict[str, str]]:
    """A users file with one annotator and the server environment that requires its login
    (what ``medseg serve --users FILE`` sets), or ``(None, {})`` when this medseg has no login."""
    if not login_available():
        return None, {}
    from medseg.serve.access import auth_environment
    from medseg.serve.users import add_user

    credentials = Credentials(BROWSER_USER, secrets.token_urlsafe(18))
    users_file = workdir / "users.json"
    add_user(users_file, credentials.username, "annotator", credentials.password)
    return credentials, auth_environment(str(users_file), None, token_minutes=30)


def api_headers(base_url: str, credentials: Credentials | None) -> dict[str, str]:
    """``Authorization`` for REST calls: a token from ``POST /auth/token`` (none without a login)."""
    if credentials is None:
        return {}
    resp = call(
        "POST",
        f"{base_url}/auth/token",
        fields={"username": credentials.username, "password": credentials.password},
    )
    check(resp.status == 200, f"POST /auth/token refused {credentials.username}: {resp.status} {resp.detail}")
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def login(s: Session, credentials: Credentials, timeout: float = 30) -> dict:
    """Log the browser in through the server's login page; returns the session cookie's flags.

    First checks that ``/ohif/`` is closed without a login, then fills the page's form
    (:data:`LOGIN_FIELDS`), submits it, and checks that the server set the HttpOnly, SameSite=Strict
    session cookie that OHIF's requests then carry.

    Args:
        s: the browser session (on the server's URL).
        credentials: a user of the server.
        timeout: seconds to wait for the form and for the cookie.
    """
    from selenium.webdriver.common.by import By

    driver = s.driver
    driver.get(f"{s.base_url}/ohif/")
    check(
        not driver.find_elements(By.ID, "root") and LOGIN_PAGE in driver.page_source,
        "/ohif/ opened without a login",
    )
    driver.get(f"{s.base_url}{LOGIN_PAGE}?next=/ohif/")
    user_field, password_field = LOGIN_FIELDS
    wait_for(driver, "the login form", css(f'input[name="{user_field}"]'), timeout)[0].send_keys(
        credentials.username
    )
    password = driver.find_element(By.NAME, password_field)
    password.send_keys(credentials.password)
    s.shot("00-login.png")
    password.submit()

    def session_cookie(d: Any) -> dict | None:
        return next((c for c in d.get_cookies() if c["name"] == SESSION_COOKIE), None)

    cookie = wait_for(driver, f"the session cookie {SESSION_COOKIE}", session_cookie, timeout)
    check(cookie.get("httpOnly") is True, f"the session cookie is not HttpOnly: {cookie}")
    check(cookie.get("sameSite") == "Strict", f"the session cookie is not SameSite=Strict: {cookie}")
    return {"name": cookie["name"], "httpOnly": cookie["httpOnly"], "sameSite": cookie["sameSite"]}


# --- OHIF pages -------------------------------------------------------------------------------------


def wait_for(driver: Any, what: str, condition: Callable[[Any], Any], timeout: float) -> Any:
    """``condition(driver)`` once it is truthy; :class:`Failed` naming ``what`` after ``timeout`` s."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise Failed(f"OHIF: {what} did not appear within {timeout:.0f} s") from None


def css(selector: str) -> Callable[[Any], list]:
    """A condition: the visible elements matching a CSS selector (empty list while there are none)."""
    from selenium.webdriver.common.by import By

    def found(driver: Any) -> list:
        return [e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]

    return found


def webgl_info(driver: Any) -> dict:
    """What WebGL the page gets (OHIF's viewports need WebGL 2; headless Chromium: SwiftShader)."""
    return driver.execute_script(
        """
        const gl = document.createElement('canvas').getContext('webgl2');
        if (!gl) return {webgl2: false};
        const ext = gl.getExtension('WEBGL_debug_renderer_info');
        return {webgl2: true,
                renderer: ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER)};
        """
    )


# Reads the viewports' pixels: OHIF (cornerstone3D) renders with WebGL off screen and copies each
# viewport into a 2-D canvas, which can be read back.
_VIEWPORT_PIXELS = """
const stats = {levels: 0, coloured: 0};
const levels = new Set();
for (const c of document.querySelectorAll('[data-cy="viewport-pane"] canvas')) {
  if (c.width < 2 || c.height < 2) continue;
  const copy = document.createElement('canvas');
  copy.width = c.width; copy.height = c.height;
  const ctx = copy.getContext('2d');
  ctx.drawImage(c, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < px.length; i += 4) {
    if (levels.size < 256) levels.add(px[i]);
    const hi = Math.max(px[i], px[i + 1], px[i + 2]), lo = Math.min(px[i], px[i + 1], px[i + 2]);
    if (hi - lo > 60) stats.coloured++;
  }
}
stats.levels = levels.size;
return stats;
"""


def viewport_pixels(driver: Any) -> dict:
    """``{"levels": distinct red levels (an image has many, a blank viewport one or two),
    "coloured": pixels far from grey (a segment overlay; MR images are grey)}``."""
    return driver.execute_script(_VIEWPORT_PIXELS)


def canvas_has_image(driver: Any) -> bool:
    """True when the viewports show an image (many grey levels), not a blank or loading canvas."""
    return viewport_pixels(driver)["levels"] > 8


def coloured_pixels(driver: Any) -> int:
    """How many viewport pixels are coloured (0 is falsy: a condition for :func:`wait_for`)."""
    return int(viewport_pixels(driver)["coloured"])


def segment_rows(driver: Any, names: list[str]) -> list:
    """The segmentation panel's rows of the segments ``names``, in that order, once all are listed."""
    rows = css('[data-cy="data-row"]')(driver)
    found = [next((r for r in rows if name in r.text), None) for name in names]
    return found if all(found) else []


def viewport_loading(driver: Any) -> list:
    """Visible "Loading..." indicators in the viewports (OHIF fades them out after a load)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, '//*[@data-cy="viewport-grid"]//*[contains(text(), "Load")]')
    return [e for e in found if e.is_displayed()]


def study_rows(driver: Any) -> list:
    return css('[data-cy="study-list-results"] tbody tr')(driver)


def thumbnails(driver: Any) -> list:
    return css('[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]')(driver)


@dataclass
class Session:
    """One browser session against the server: the driver, where screenshots go, and the report."""

    driver: Any
    base_url: str
    shots: Path
    report: dict
    ui_timeout: float
    step: StepLog = field(init=False)

    def __post_init__(self) -> None:
        self.step = StepLog(self.report)  # record a passed stage in the report and print it

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole window as ``name`` in the screenshot folder."""
        path = self.shots / name
        self.driver.save_screenshot(str(path))
        self.report["screenshots"].append(path.name)
        return path

    def settle(self) -> None:
        """Wait until the viewports show no loading indicator (before a screenshot)."""
        self.wait("the viewports done loading", lambda d: not viewport_loading(d), 60)
        time.sleep(1)  # the last frame drawn

    def wait(self, what: str, condition: Callable[[Any], Any], timeout: float | None = None) -> Any:
        return wait_for(self.driver, what, condition, self.ui_timeout if timeout is None else timeout)


def open_study_list(s: Session, patient_id: str) -> Any:
    """``/ohif/``: the study list shows the patient's study (WebGL checked first); returns its row."""
    s.driver.get(f"{s.base_url}/ohif/")
    gl = webgl_info(s.driver)
    s.step("chromium", version=s.driver.capabilities.get("browserVersion"), **gl)
    check(gl.get("webgl2", False), "headless Chromium has no WebGL 2: OHIF cannot draw its viewports")
    rows = s.wait(
        f"the study of patient {patient_id} in the study list",
        lambda d: [r for r in study_rows(d) if patient_id in r.text],
    )
    for button in css('[data-cy="confirm-and-hide-button"]')(s.driver):
        button.click()  # OHIF's "for investigational use only" banner, once per browser session
    s.shot("01-study-list.png")
    s.step("study listed", row=rows[0].text.replace("\n", " | "))
    return rows[0]


def open_viewer(s: Session, row: Any, mode: str, study_uid: str) -> None:
    """Open the study from its row as a user does (row -> mode button); the series is drawn."""
    row.click()  # the row expands to the modes that can open the study
    button = s.wait(f"the study's '{mode}' mode button", css(f'[data-cy="mode-{mode}-{study_uid}"]'), 30)
    button[0].click()
    s.wait("a viewport canvas", css('[data-cy="viewport-pane"] canvas'))
    s.wait("the series drawn in the viewport", canvas_has_image)
    s.wait("the series in the study browser", thumbnails)
    s.settle()
    coloured = coloured_pixels(s.driver)
    check(coloured < 50, f"the viewport shows {coloured} coloured pixels before any SEG is loaded")
    s.shot("02-viewer.png")
    s.step("viewer shows the series", url=s.driver.current_url, coloured_pixels=coloured)


def store_seg(server_url: str, bundle: str, series_uid: str, headers: dict[str, str]) -> str:
    """Segment the series with ``bundle`` and store the SEG on the PACS; returns its SeriesInstanceUID."""
    resp = call(
        "POST",
        f"{server_url}/infer/{bundle}?image={series_uid}&output=dicom_seg",
        fields={"params": json.dumps({"store": True})},
        headers=headers,
        timeout=600,
    )
    check(resp.status == 200, f"/infer output=dicom_seg failed: {resp.status} {resp.detail}")
    check(resp.headers.get("x-medseg-stored") == "true", "the server did not store the SEG")
    return resp.headers.get("x-medseg-seg-series-uid", "")


def show_seg(s: Session, bundle: str, labels: list[str]) -> None:
    """Reload the viewer: the SEG is listed; open it: its segments are listed and drawn in colour."""
    from selenium.webdriver.common.action_chains import ActionChains

    s.driver.refresh()
    items = s.wait(
        f"the {bundle} SEG series in the study browser",
        lambda d: [t for t in thumbnails(d) if "SEG" in t.text and bundle in t.text],
    )
    s.wait("the series drawn in the viewport", canvas_has_image)
    s.settle()
    s.shot("03-seg-listed.png")
    s.step("seg listed", thumbnail=items[0].text.replace("\n", " | "))

    # a double click puts the SEG in the viewport; OHIF asks before it loads ("hydrates") it
    ActionChains(s.driver).double_click(items[0]).perform()
    s.wait("OHIF's 'open this Segmentation?' prompt", css('[data-cy="yes-hydrate-btn"]'), 60)[0].click()
    rows = s.wait(f"the segments {labels} in the segmentation panel", lambda d: segment_rows(d, labels))
    s.wait("the SEG loaded (prompt gone)", lambda d: not css('[data-cy="yes-hydrate-btn"]')(d), 60)
    s.wait("the image under the SEG drawn", canvas_has_image)
    jump_to_segment(s, rows[0])
    s.settle()
    coloured = coloured_pixels(s.driver)
    check(coloured > 0, "the SEG overlay vanished from the viewport")
    s.shot("04-seg-loaded.png")
    s.step("seg loaded", segments=labels, coloured_pixels=coloured)


def jump_to_segment(s: Session, row: Any, tries: int = 4) -> int:
    """Click a segment's row until the viewport draws it in colour; returns the coloured pixels.

    A click jumps to the segment's slice. While the volume still streams in, the jump can land on a
    slice that is not drawn again when its data arrives (seen on a loaded CI machine), so a user, like
    this function, clicks again.
    """
    for attempt in range(1, tries + 1):
        row.click()
        try:
            return wait_for(s.driver, "the SEG drawn over the image", coloured_pixels, s.ui_timeout / tries)
        except Failed:
            if attempt == tries:
                raise
            s.step("segment not drawn yet, clicking again", attempt=attempt)
    raise AssertionError("unreachable")


def series_patient_id(folder: Path) -> str:
    """PatientID of the DICOM series in ``folder`` (what the study list shows as MRN)."""
    import pydicom

    first = next(p for p in sorted(folder.rglob("*")) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).PatientID)


# --- click correction in OHIF's MONAI Label mode --------------------------------------------------
# What MONAI Label 0.8.5 ships at /ohif/ (its OHIF build, extensions/monai-label and modes/monai-label):
# the mode "monai-label" (study list button "MONAI Label") opens the series in an MPR layout with a
# MONAI Label panel on the right. The panel connects to a server URL typed into it; its "Point Prompts"
# tab lists the deepgrow, deepedit and vista3d models and activates the ProbeMONAILabel point tool; a
# table row picks the label the next points carry. "Run" posts
# /infer/<model>?image=<SeriesInstanceUID>&output=image with, for a deepedit model, params
# {"background": [...], "<label>": [[i, j, k], ...], "result_extension": ".nrrd", "result_dtype":
# "uint8", "result_compress": false, "restore_label_idx": false}, [i, j, k] being the rounded voxel
# indices of each point in the viewports' volume. The NRRD answer is copied into OHIF's labelmap
# for the labels that carry points (or whose row was picked).

MONAI_LABEL_MODE = "monai-label"
POINT_TAB = "Point Prompts"
SERVER_FIELD = "monailabelServerURL"
AXIAL_VIEWPORT = "mpr-axial"  # the mode's MPR layout: axial, sagittal, coronal
OHIF_SEGMENTATION = "1"  # the labelmap the MONAI Label panel creates and updates
INFER_TIMEOUT_S = 600

# Records, in every document the browser loads from now on, each /infer request the page sends (OHIF
# posts through axios, i.e. XMLHttpRequest): its URL, its params and its answer; and the page's
# unhandled promise rejections (the panel's Run handler fails without a word on screen otherwise).
INFER_HOOK = r"""
(() => {
  if (window.__medsegInfer) return;
  window.__medsegInfer = [];
  window.__medsegErrors = [];
  window.addEventListener('unhandledrejection', (e) => {
    window.__medsegErrors.push(String((e.reason && e.reason.stack) || e.reason));
  });
  const base64 = (buffer) => {
    const bytes = new Uint8Array(buffer);
    let text = '';
    for (let i = 0; i < bytes.length; i += 32768) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    }
    return btoa(text);
  };
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.__medseg = {method: method, url: String(url)};
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function (body) {
    const record = this.__medseg;
    if (record && record.url.includes('/infer/')) {
      record.params = body instanceof FormData ? body.get('params') : null;
      window.__medsegInfer.push(record);
      this.addEventListener('loadend', () => {
        record.body = this.response instanceof ArrayBuffer ? base64(this.response) : null;
        record.status = this.status;
      });
    }
    return send.apply(this, arguments);
  };
})();
"""

# OHIF's labelmap (window.services is OHIF's service registry), as base64 bytes in cornerstone's
# voxel order (i fastest), with its dimensions.
_LABELMAP = """
const volume = window.services.segmentationService.getLabelmapVolume(arguments[0]);
if (!volume) return null;
const values = volume.voxelManager.getCompleteScalarDataArray();
const bytes = Uint8Array.from(values);
let text = '';
for (let i = 0; i < bytes.length; i += 32768) {
  text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
}
return {dimensions: Array.from(volume.dimensions), data: btoa(text)};
"""

# The axial viewport's canvas (page position and size) and camera, and canvas <-> world (LPS mm).
_VIEWPORT = """
const viewport = window.services.cornerstoneViewportService.getCornerstoneViewport(arguments[0]);
const rect = viewport.getCanvas().getBoundingClientRect();
const out = {rect: [rect.left, rect.top, rect.width, rect.height],
             focal: Array.from(viewport.getCamera().focalPoint)};
if (arguments[1]) out.canvas = Array.from(viewport.worldToCanvas(arguments[1]));
if (arguments[2]) out.world = Array.from(viewport.canvasToWorld(arguments[2]));
return out;
"""


def install_infer_hook(driver: Any) -> None:
    """Record the page's ``/infer`` requests and unhandled errors (:data:`INFER_HOOK`) from now on."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": INFER_HOOK})


def infer_records(driver: Any) -> list[dict]:
    """The ``/infer`` requests the page sent: ``url``, ``params`` (JSON text) and, once answered,
    ``status`` and ``body`` (base64)."""
    return list(driver.execute_script("return window.__medsegInfer || []"))


def nrrd_labels(data: bytes) -> np.ndarray:
    """The ``[i, j, k]`` label array of an uncompressed 3-D uint8 NRRD file (what OHIF asks MONAI
    Label for: ``result_extension`` .nrrd, ``result_dtype`` uint8, ``result_compress`` false).

    Raises:
        Failed: the data is not such a file.
    """
    header, sep, body = data.partition(b"\n\n")
    check(sep == b"\n\n" and header.startswith(b"NRRD"), "the /infer answer is not an NRRD file")
    fields = dict(line.split(": ", 1) for line in header.decode("latin-1").splitlines()[1:] if ": " in line)
    check(
        fields.get("encoding") == "raw"
        and fields.get("type") in ("uchar", "unsigned char", "uint8", "uint8_t")
        and fields.get("dimension") == "3",
        f"the /infer answer is not a raw 3-D uint8 NRRD: {fields}",
    )
    sizes = [int(v) for v in fields["sizes"].split()]
    check(len(body) == int(np.prod(sizes)), f"the NRRD holds {len(body)} bytes for sizes {sizes}")
    return np.frombuffer(body, dtype=np.uint8).reshape(sizes[::-1]).transpose()


def click_voxel(affine: np.ndarray, world_lps: Any) -> list[int]:
    """The voxel ``[i, j, k]`` at a DICOM patient position (LPS mm) of an image with a RAS affine."""
    ras = np.array([-float(world_lps[0]), -float(world_lps[1]), float(world_lps[2]), 1.0])
    return [int(v) for v in np.rint(np.linalg.inv(affine) @ ras)[:3]]


def voxel_world(affine: np.ndarray, voxel: Any) -> list[float]:
    """The DICOM patient position (LPS mm) of voxel ``[i, j, k]`` of an image with a RAS affine."""
    x, y, z = (affine @ np.array([*map(float, voxel), 1.0]))[:3]
    return [-float(x), -float(y), float(z)]


def ohif_labelmap(driver: Any) -> np.ndarray | None:
    """OHIF's labelmap as an ``[i, j, k]`` array of segment indices (None before the panel made one)."""
    import base64

    found = driver.execute_script(_LABELMAP, OHIF_SEGMENTATION)
    if not found:
        return None
    values = np.frombuffer(base64.b64decode(found["data"]), dtype=np.uint8)
    return values.reshape(found["dimensions"][::-1]).transpose()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` hold the same regions, whatever values name them (OHIF draws a label
    of the model under the index of its segment: a one-to-one renaming)."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def shows(driver: Any, answer: np.ndarray, values: list[int]) -> bool:
    """True when OHIF's labelmap holds the labels ``values`` of the server's ``answer`` (and nothing else)."""
    labelmap = ohif_labelmap(driver)
    expected = np.where(np.isin(answer, values), answer, 0)
    return labelmap is not None and same_partition(labelmap, expected)


def connect_monai_label(s: Session, bundle: str) -> Any:
    """Connect the MONAI Label panel to the server and open its Point Prompts tab with ``bundle``.

    The server's URL is typed into the panel's field, as a user does (the panel's default is port
    8000 of the page's host). Returns the tab's element.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    target = f"{s.base_url}/"
    for attempt in range(1, 4):  # the panel may still be drawn anew while the viewer settles
        try:
            url = s.wait("the MONAI Label panel's server field", css(f"#{SERVER_FIELD}"))[0]
            url.send_keys(Keys.CONTROL, "a")
            url.send_keys(target)
            check(
                url.get_attribute("value") == target,
                f"the panel's server field holds {url.get_attribute('value')}",
            )
            url.find_element(By.XPATH, "ancestor::tr//button").click()  # the connect button beside it
            break
        except StaleElementReferenceException:
            if attempt == 3:
                raise
            time.sleep(1)

    def point_tab(d: Any) -> list:
        return [e for e in css(".tab-label")(d) if e.text.strip() == POINT_TAB]

    label = s.wait(f"the panel's '{POINT_TAB}' tab (connected to {s.base_url})", point_tab)[0]
    label.click()
    tab = label.find_element(By.XPATH, "..")
    models = [o.get_attribute("value") for o in tab.find_elements(By.CSS_SELECTOR, "select option")]
    check(
        bundle in models, f"OHIF's {POINT_TAB} lists the models {models}, not {bundle} (served as deepedit?)"
    )
    Select(tab.find_element(By.CSS_SELECTOR, "select")).select_by_value(bundle)
    return tab


def _tab_element(tab: Any, selector: str, text: str) -> Any:
    from selenium.webdriver.common.by import By

    found = [e for e in tab.find_elements(By.CSS_SELECTOR, selector) if e.text.strip() == text]
    check(bool(found), f"OHIF's {POINT_TAB} tab has no '{text}' ({selector})")
    return found[0]


def run_point_prompts(s: Session, tab: Any, what: str) -> dict:
    """Press the tab's Run; returns the ``/infer`` request it sent once answered 200."""
    before = len(infer_records(s.driver))
    _tab_element(tab, "button.actionButton", "Run").click()

    def answered(d: Any) -> dict | None:
        errors = d.execute_script("return window.__medsegErrors || []")
        check(not errors, f"OHIF's {POINT_TAB} Run failed in the page: {errors[-1][:600] if errors else ''}")
        records = infer_records(d)
        return records[before] if len(records) > before and "status" in records[before] else None

    record = s.wait(f"OHIF's /infer request {what} answered", answered, INFER_TIMEOUT_S)
    check(record["status"] == 200, f"/infer {what} from OHIF answered {record['status']}")
    return record


# Tries at placing the click: on a loaded machine the point tool can miss a click that arrives while
# the viewport is still drawing (OHIF then sends no point); a user clicks again, and so does the check.
CLICK_ATTEMPTS = 3


def place_click(s: Session, target: list[int], affine: np.ndarray) -> dict:
    """Click the axial viewport where voxel ``target`` of the stored image is (a real mouse click).

    Returns where the click went: page position, and its patient position and voxel as the viewport
    maps the clicked canvas point back (which must be ``target``).
    """
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    view = s.driver.execute_script(_VIEWPORT, AXIAL_VIEWPORT, voxel_world(affine, target), None)
    left, top, width, height = view["rect"]
    cx, cy = view["canvas"]
    check(0 <= cx < width and 0 <= cy < height, f"voxel {target} is outside the axial viewport ({cx}, {cy})")
    x, y = round(left + cx), round(top + cy)
    actions = ActionBuilder(s.driver)
    actions.pointer_action.move_to_location(x, y)
    actions.pointer_action.click()
    actions.perform()
    clicked = s.driver.execute_script(_VIEWPORT, AXIAL_VIEWPORT, None, [x - left, y - top])["world"]
    voxel = click_voxel(affine, clicked)
    check(voxel == target, f"the click at ({x}, {y}) landed on voxel {voxel}, not {target}")
    return {"page_xy": [x, y], "world_lps": [round(v, 2) for v in clicked], "voxel": voxel}


def click_target(s: Session, answer: np.ndarray, value: int, affine: np.ndarray) -> list[int]:
    """A voxel of label ``value`` in the slice the axial viewport shows: the one nearest the middle of
    that label's area there (inside it, away from its border where it can be)."""
    from scipy import ndimage

    focal = s.driver.execute_script(_VIEWPORT, AXIAL_VIEWPORT, None, None)["focal"]
    k = click_voxel(affine, focal)[2]
    check(0 <= k < answer.shape[2], f"the axial viewport shows slice {k}, outside the image")
    area = answer[:, :, k] == value
    check(bool(area.any()), f"the axial viewport's slice {k} holds no voxel of label {value} to click on")
    inner = ndimage.binary_erosion(area)
    points = np.argwhere(inner if inner.any() else area)
    i, j = points[np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))]
    return [int(i), int(j), int(k)]


def correct_with_click(
    s: Session,
    bundle: str,
    labels: dict[int, str],
    image: Any,
    again: Callable[[dict], np.ndarray],
) -> dict:
    """Correct the model's mask with one click in OHIF's MONAI Label mode; returns what was checked.

    As a user does: connect the panel, pick the first label, Run without points (the automatic mask),
    pick the last label (``background`` for a one-label model), click on the first label's mask in the
    axial viewport, Run again. Checked: the first request carries no point and the second exactly
    the click, at the voxel of the stored image under the clicked position; OHIF shows each answer;
    the answer with the click differs from the one without, and some voxels took the clicked label;
    the server answers the request without the click as before (``again``), so the change is the
    click's.

    Args:
        s: the browser session, on the viewer of the study in the ``monai-label`` mode.
        bundle: the interactive bundle (served as ``deepedit``).
        labels: the bundle's labels, ``{value: name}`` (background included).
        image: the series as the server stores it (medseg's loader; a MetaTensor with its RAS affine):
            the voxels the server indexes.
        again: sends ``params`` to ``/infer`` over HTTP and returns the label array.
    """
    import base64

    from selenium.webdriver.common.by import By

    affine = np.asarray(image.affine, dtype=float)
    names = {v: n for v, n in labels.items() if v != 0}
    check(bool(names), f"{bundle} has no label to click")
    first = min(names)
    clicked = max(names) if len(names) > 1 else 0
    clicked_name = names.get(clicked, "background")
    tab = connect_monai_label(s, bundle)
    s.shot("10-point-prompts.png")
    s.step(
        "point prompts",
        model=bundle,
        labels=[e.text for e in tab.find_elements(By.CSS_SELECTOR, "tr.clickable-row")],
    )

    # The shipped panel's Run gathers its points with saveAnnotations(null, 'ProbeMONAILabel'), which
    # returns every tool's annotations; the MPR layout's crosshairs and reference lines are some, and
    # Run then fails ("annotations is not iterable"). "Clear Points" removes them all first.
    _tab_element(tab, "a", "Clear Points").click()
    _tab_element(tab, "tr.clickable-row", names[first]).click()
    record = run_point_prompts(s, tab, "without clicks")
    params = json.loads(record["params"])
    sent = {n: params.get(n) for n in ("background", *names.values()) if params.get(n)}
    check(not sent, f"OHIF sent points before any click: {sent}")
    automatic = nrrd_labels(base64.b64decode(record["body"]))
    check(automatic.shape == tuple(image.shape), f"the answer's shape {automatic.shape} is not the image's")
    s.wait("OHIF drawing the automatic mask", lambda d: shows(d, automatic, [first]), 60)
    s.settle()
    s.shot("11-automatic.png")
    s.step("automatic", params=params, voxels=np.bincount(automatic.ravel()).tolist())

    target = click_target(s, automatic, first, affine)
    for attempt in range(1, CLICK_ATTEMPTS + 1):
        if attempt > 1:  # the point tool missed the click (a busy renderer): clear and click again
            _tab_element(tab, "a", "Clear Points").click()
        _tab_element(tab, "tr.clickable-row", clicked_name).click()
        click = place_click(s, target, affine)
        s.settle()  # the point tool records the click as an annotation once the viewport has drawn it
        s.shot("12-click.png")
        s.step("click placed", label=clicked_name, on_label=names[first], attempt=attempt, **click)
        record = run_point_prompts(s, tab, "with the click")
        params = json.loads(record["params"])
        sent = {n: params.get(n) for n in ("background", *names.values()) if params.get(n)}
        if sent:
            break
    check(
        sent == {clicked_name: [target]},
        f"OHIF sent the points {sent}, not {{{clicked_name!r}: [{target}]}}",
    )
    corrected = nrrd_labels(base64.b64decode(record["body"]))
    shown = [first] + ([clicked] if clicked else [])
    s.wait("OHIF drawing the corrected mask", lambda d: shows(d, corrected, shown), 60)
    changed = int((corrected != automatic).sum())
    took = int(((corrected == clicked) & (automatic != clicked)).sum())
    check(changed > 0, f"the click on voxel {target} did not change the mask")
    check(took > 0, f"no voxel took the clicked label {clicked_name!r} ({changed} voxels changed)")
    check(
        np.array_equal(again({}), automatic), "the server answers the request without clicks differently now"
    )
    s.settle()
    s.shot("13-corrected.png")
    s.step(
        "corrected",
        params=params,
        voxels=np.bincount(corrected.ravel(), minlength=len(labels)).tolist(),
        changed=changed,
        took_clicked_label=took,
    )
    return {"target": target, "changed": changed}


def http_labels(
    server_url: str, bundle: str, series_uid: str, headers: dict[str, str], params: dict
) -> np.ndarray:
    """The server's answer to ``params`` over HTTP, as OHIF asks for it (NRRD, uint8, uncompressed)."""
    form = {**params, "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
    resp = call(
        "POST",
        f"{server_url}/infer/{bundle}?image={series_uid}&output=image",
        fields={"params": json.dumps(form)},
        headers=headers,
        timeout=INFER_TIMEOUT_S,
    )
    check(resp.status == 200, f"/infer {params} over HTTP answered {resp.status} {resp.detail}")
    return nrrd_labels(resp.body)


def run(args: argparse.Namespace) -> dict:
    """The whole check; returns the report (raises :class:`Failed` on the first failed check)."""
    workdir = Path(args.workdir).resolve()
    shots = Path(args.screenshots).resolve() if args.screenshots else workdir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    report: dict = {"ok": False, "steps": [], "screenshots": [], "screenshot_dir": str(shots)}
    orthanc = f"http://127.0.0.1:{args.orthanc_port}"
    session = Session(driver=None, base_url="", shots=shots, report=report, ui_timeout=args.ui_timeout)

    orthanc_proc = start_orthanc(workdir / "orthanc-storage", args.orthanc_port, workdir / "orthanc.log")
    server = None
    try:
        wait_http(f"{orthanc}/system", 60)
        series = Path(args.series)
        source = upload_series(orthanc, series)
        report["source"] = source
        session.step("series uploaded", **source)

        bundle = discover_bundles(REPO / "bundles", [args.bundle] if args.bundle else None)[0]
        bundle_labels = {int(v): str(n) for v, n in open_bundle(bundle.root).labels.items()}
        labels = [n for v, n in sorted(bundle_labels.items()) if v != 0]
        credentials, auth_env = server_credentials(workdir)
        report["users"] = credentials is not None
        prepared = prepare_workdir(workdir / "serve", f"{orthanc}/dicom-web", [bundle])
        python = Path(args.label_python) if args.label_python else find_label_python(create=False)
        server = LabelServer(python, prepared, log=workdir / "server.log", extra_env=auth_env)
        server.start()
        server.wait_ready(timeout=args.ready_timeout)
        headers = api_headers(server.url, credentials)
        info = call("GET", f"{server.url}/info/", headers=headers)
        check(info.status == 200, f"GET /info/ answered {info.status} {info.detail}")
        models = info.json()["models"]
        check(bundle.name in models, f"{bundle.name} not in /info/ models {list(models)}")
        model_type = models[bundle.name].get("type")
        if args.check == "clicks":
            check(
                model_type == "deepedit",
                f"{bundle.name} is served as {model_type!r}, not deepedit (interactive)",
            )
        session.base_url = server.url
        session.step("monailabel ready", url=server.url, users=report["users"], type=model_type)

        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir))
        with start_browser(profile, workdir / "chromedriver.log") as driver:
            session.driver = driver
            install_infer_hook(driver)
            try:
                if credentials is not None:
                    session.step("logged in", cookie=login(session, credentials))
                row = open_study_list(session, series_patient_id(series))
                mode = args.mode or (MONAI_LABEL_MODE if args.check == "clicks" else "segmentation")
                open_viewer(session, row, mode, source["study_uid"])
                if args.check == "clicks":
                    from medseg.io import load_image

                    image = load_image(series, series_uid=source["series_uid"], dtype=None)
                    again = functools.partial(
                        http_labels, server.url, bundle.name, source["series_uid"], headers
                    )
                    correct_with_click(session, bundle.name, bundle_labels, image, again)
                else:
                    seg_uid = store_seg(server.url, bundle.name, source["series_uid"], headers)
                    session.step("seg stored", seg_series_uid=seg_uid)
                    show_seg(session, bundle.name, labels)
            finally:
                save_browser_state(session, workdir)
        report["ok"] = True
        return report
    finally:
        if server is not None:
            server.stop()
        stop_process_group(orthanc_proc)
        session.step("stopped")


def save_browser_state(s: Session, workdir: Path) -> None:
    """The last screen and the browser console (kept also when a stage failed)."""
    with contextlib.suppress(Exception):
        s.shot("99-last.png")
    with contextlib.suppress(Exception):
        (workdir / "browser-console.json").write_text(json.dumps(s.driver.get_log("browser"), indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", required=True, help="working folder (Orthanc storage, server workdir, logs)"
    )
    parser.add_argument("--series", default=str(default_series()), help="DICOM series folder to upload")
    parser.add_argument("--bundle", default=None, help="bundle to run (default: the first one with weights)")
    parser.add_argument(
        "--check",
        choices=("seg", "clicks"),
        default="seg",
        help="seg: a SEG medseg stored, shown in OHIF; clicks: an interactive bundle corrected with a click "
        "in OHIF's MONAI Label mode",
    )
    parser.add_argument(
        "--mode",
        default=None,
        help="OHIF mode that opens the study (default: segmentation; monai-label for clicks)",
    )
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--label-python", default=None, help="python of the MONAI Label venv")
    parser.add_argument("--ready-timeout", type=float, default=420)
    parser.add_argument("--ui-timeout", type=float, default=120, help="seconds each OHIF stage may take")
    parser.add_argument(
        "--screenshots", default=None, help="screenshot folder (default: WORKDIR/screenshots)"
    )
    parser.add_argument("--report", default=None, help="write the JSON report here")
    args = parser.parse_args()
    reason = missing_browser()
    if reason:
        print(f"ohif check: {reason}", file=sys.stderr)
        return 2
    return run_and_report(run, args, "ohif check")


if __name__ == "__main__":
    sys.exit(main())
