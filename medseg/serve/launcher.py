"""Start, watch and stop the MONAI Label server of ``medseg serve`` (core venv side).

The server runs in the MONAI Label venv as a child process in its own process group, bound to
127.0.0.1 unless told otherwise (``medseg serve --host`` refuses other addresses without a login, see
:mod:`medseg.serve.access`); :class:`LabelServer` starts it, waits until ``GET /info/`` answers (a 401
counts: a login is required), and stops it together with everything it started (training jobs included).

The venv's recipe (``label_venv.sh`` with its pinned requirements) ships inside the package
(``medseg/serve/label/recipe/``), so ``medseg serve`` builds the venv on first use from a source
checkout and from an installed package alike. The server imports the *same* medseg as the caller:
:func:`medseg_pythonpath` puts this package (found from ``medseg.__file__``, never a repository
root) on the server's ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import medseg
from medseg.errors import ConfigError, MedsegError
from medseg.serve.workdir import PreparedWorkdir

__all__ = [
    "LabelServer",
    "ServerError",
    "find_label_python",
    "free_port",
    "medseg_pythonpath",
    "port_is_free",
    "upload_environment",
    "LABEL_VENV_SCRIPT",
]

LABEL_VENV_SCRIPT = Path(__file__).resolve().parent / "label" / "recipe" / "label_venv.sh"
HOST = "127.0.0.1"


class ServerError(MedsegError):
    """The MONAI Label server did not start or stopped unexpectedly."""


def _socket_for(host: str) -> socket.socket:
    """A TCP socket of the family of ``host`` (IPv6 for ``::1``), with ``SO_REUSEADDR`` as uvicorn sets
    it: a port whose last server was killed moments ago (connections in TIME_WAIT) is free."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` now."""
    with contextlib.closing(_socket_for(host)) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with contextlib.closing(_socket_for(host)) as sock:
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def upload_environment(max_upload_mb: float, max_voxels: int) -> dict[str, str]:
    """The server's environment for its upload limits (see :mod:`medseg.serve.limits`)."""
    from medseg.serve.limits import MAX_UPLOAD_ENV, MAX_VOXELS_ENV

    return {MAX_UPLOAD_ENV: f"{max_upload_mb:g}", MAX_VOXELS_ENV: str(int(max_voxels))}


def _run_recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LABEL_VENV_SCRIPT), *args], stdout=subprocess.PIPE, stderr=None, text=True
    )


def find_label_python(create: bool = True) -> Path:
    """Python of the MONAI Label venv: ``$MEDSEG_LABEL_PYTHON``, else the venv of the shipped recipe.

    Args:
        create: build the venv when it does not exist yet (first use: minutes, about 8 GB; a message
            says so); else fail.

    Raises:
        ConfigError: no usable venv; the message says how to make one.
    """
    explicit = os.environ.get("MEDSEG_LABEL_PYTHON")
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(
                f"MEDSEG_LABEL_PYTHON={explicit} does not exist; unset it or point it at a python"
            )
        return Path(explicit)
    build = f"bash {LABEL_VENV_SCRIPT}"
    if not LABEL_VENV_SCRIPT.is_file():
        raise ConfigError(
            f"the MONAI Label venv recipe {LABEL_VENV_SCRIPT} is missing from this medseg installation; "
            "reinstall medseg or set MEDSEG_LABEL_PYTHON to the python of a MONAI Label 0.8.5 venv"
        )
    proc = _run_recipe("--path")  # fast: an existing, completely built venv
    if proc.returncode != 0 and create:
        print(
            "medseg serve: building the MONAI Label venv on first use (a few minutes, about 8 GB; "
            f"later runs reuse it). Recipe: {LABEL_VENV_SCRIPT}",
            file=sys.stderr,
            flush=True,
        )
        proc = _run_recipe()
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise ConfigError(
            f"the MONAI Label venv is not ready ({build} exited {proc.returncode}); "
            f"run `{build}` and read its messages, or set MEDSEG_LABEL_PYTHON"
        )
    python = Path(lines[-1]) / "bin" / "python"
    if not python.is_file():
        raise ConfigError(f"{python} does not exist; rebuild the venv with `{build}`")
    return python


def medseg_pythonpath(workdir: str | os.PathLike) -> Path:
    """A folder that makes the MONAI Label venv import this very medseg; returns it for ``PYTHONPATH``.

    The package's parent folder cannot go on the server's path as it is: for an installed package
    that is the core venv's ``site-packages``, whose numpy 2 / pydicom 3 / monai 1.6 would shadow the
    MONAI Label venv's own. So ``WORKDIR/python/`` gets a link to the package (``medseg.__file__``'s
    folder) and a minimal ``medseg-<version>.dist-info`` (``medseg.__version__`` stays the same there).

    Args:
        workdir: the prepared working folder.
    """
    package = Path(medseg.__file__).resolve().parent
    folder = Path(workdir) / "python"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "medseg"
    if not (link.is_symlink() and Path(os.readlink(link)) == package):
        if link.is_symlink() or link.is_file():
            link.unlink()
        tmp = folder / f".medseg-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(package, target_is_directory=True)
        os.replace(tmp, link)
    for stale in folder.glob("medseg-*.dist-info"):
        if stale.name != f"medseg-{medseg.__version__}.dist-info":
            for entry in stale.iterdir():
                entry.unlink()
            stale.rmdir()
    info = folder / f"medseg-{medseg.__version__}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: medseg\nVersion: {medseg.__version__}\n")
    return folder


class LabelServer:
    """The MONAI Label server process for a prepared workdir.

    Use as a context manager, or call :meth:`start` / :meth:`wait_ready` / :meth:`stop`.
    ``log`` is a file that receives the server's output (None: inherit the terminal).
    """

    def __init__(
        self,
        python: str | os.PathLike,
        prepared: PreparedWorkdir,
        port: int | None = None,
        log: str | os.PathLike | None = None,
        infer_workers: int | None = None,
        extra_env: dict[str, str] | None = None,
        host: str = HOST,
        ssl_certfile: str | os.PathLike | None = None,
        ssl_keyfile: str | os.PathLike | None = None,
    ) -> None:
        self.python = str(python)
        self.prepared = prepared
        self.port = port or free_port()
        self.log_path = Path(log) if log else None
        self.infer_workers = infer_workers
        self.extra_env = dict(extra_env or {})
        self.host = host.strip().removeprefix("[").removesuffix("]")
        self.ssl_files = (str(ssl_certfile), str(ssl_keyfile)) if ssl_certfile and ssl_keyfile else None
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        """Where this machine reaches the server (loopback when it listens on every address)."""
        host = self.host.strip("[]")
        host = HOST if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl_files else 'http'}://{host}:{self.port}"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "monailabel.main",
            "start_server",
            "--app",
            str(self.prepared.app_dir),
            "--studies",
            self.prepared.studies,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *(
                ["--ssl_certfile", self.ssl_files[0], "--ssl_keyfile", self.ssl_files[1]]
                if self.ssl_files
                else []
            ),
            "--conf",
            "models",
            ",".join(self.prepared.bundles),
            "--uvicorn_app",
            "medseg.serve.label.asgi:app",
        ]

    def environment(self) -> dict[str, str]:
        # MONAI_LABEL_* settings of the caller (e.g. DICOMweb credentials) pass through
        env = dict(os.environ)
        root = self.prepared.root
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(medseg_pythonpath(root)), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        # the server's scratch space lives in the workdir (uploads being checked, Starlette's spooled
        # request bodies, MONAI Label's result files): removed when the server starts, never /tmp
        env["MEDSEG_SERVE_WORKDIR"] = str(root)
        tmp = root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        env["TMPDIR"] = str(tmp)
        env["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(root / "dicomweb-cache")
        env["MONAI_LABEL_DATASTORE_CACHE_PATH"] = str(root / "dicomweb-cache")
        env["MONAI_LABEL_SESSION_PATH"] = str(root / "sessions")
        # the stock server re-scores every image after each training run (an inference per image)
        env["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"
        # series listed from a DICOMweb server: those of the served bundles' modality (stock: CT only),
        # re-listed every minute (stock: every two hours)
        modalities = self.modalities()
        if len(modalities) == 1 and "MONAI_LABEL_DICOMWEB_SEARCH_FILTER" not in os.environ:
            env["MONAI_LABEL_DICOMWEB_SEARCH_FILTER"] = json.dumps({"Modality": modalities[0]})
        env.setdefault("MONAI_LABEL_DICOMWEB_CACHE_EXPIRY", "60")
        if self.infer_workers:
            env["MEDSEG_SERVE_INFER_WORKERS"] = str(self.infer_workers)
        env.update(self.extra_env)
        return env

    def modalities(self) -> list[str]:
        """Input modalities of the served bundles (from their metadata), e.g. ``["MR"]``."""
        found = set()
        for name in self.prepared.bundles:
            meta = json.loads(
                (self.prepared.app_dir / "model" / name / "configs" / "metadata.json").read_text()
            )
            modality = meta.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("modality")
            if modality:
                found.add(str(modality))
        return sorted(found)

    def start(self) -> LabelServer:
        if self.process is not None:
            raise ServerError("server already started")
        out = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
            out = self._log_file
        self.process = subprocess.Popen(
            self.command(),
            cwd=str(self.prepared.root),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() reaches training jobs too
        )
        return self

    def info(self, timeout: float = 5.0) -> dict:
        """``GET /info/``; ``{}`` when the server requires a login (401)."""
        # the readiness probe of our own server: its certificate may be self-signed or name another host
        context = ssl._create_unverified_context() if self.ssl_files else None
        try:
            with urllib.request.urlopen(f"{self.url}/info/", timeout=timeout, context=context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return {}
            raise

    def wait_ready(self, timeout: float = 300.0) -> dict:
        """Wait until ``/info/`` answers; returns it.

        Raises:
            ServerError: the process exited, or did not answer within ``timeout`` seconds.
        """
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"the MONAI Label server exited with code {code} before answering{self._log_hint()}"
                )
            try:
                return self.info(timeout=5.0)
            except (
                urllib.error.URLError,
                ConnectionError,
                TimeoutError,
                OSError,
                json.JSONDecodeError,
            ) as exc:
                last = exc
            time.sleep(0.5)
        raise ServerError(
            f"the MONAI Label server did not answer /info/ within {timeout:.0f} s ({last}){self._log_hint()}"
        )

    def _log_hint(self) -> str:
        return f"; see {self.log_path}" if self.log_path else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server's process group, then SIGKILL what is left after ``timeout`` seconds."""
        proc = self.process
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            # training jobs and their data loader workers live in the same group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            return proc.returncode
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_foreground(server: LabelServer, ready_timeout: float = 600.0) -> int:
    """Start the server, print the ready URL, and stop it on SIGTERM/SIGINT; returns an exit code."""
    stopping = {"signal": None}

    def on_signal(signum, frame):
        stopping["signal"] = signum
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        server.start()
        info = server.wait_ready(timeout=ready_timeout)
        models = ", ".join(sorted(info.get("models", {}))) or ("none" if info else "log in to list them")
        print(
            f"MONAI Label server ready at {server.url}/ (models: {models}; studies: {server.prepared.studies})",
            flush=True,
        )
        print("Connect 3D Slicer's MONAI Label module to that URL. Press Ctrl-C to stop.", flush=True)
        code = server.process.wait()
        print(f"the MONAI Label server exited with code {code}", file=sys.stderr)
        return 1 if code else 0
    except KeyboardInterrupt:
        print("stopping the MONAI Label server ...", file=sys.stderr, flush=True)
        return 0 if stopping["signal"] == signal.SIGTERM else 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
