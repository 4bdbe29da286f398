"""The clinicians' loop, driven through MONAI Label's own client as 3D Slicer drives it.

Run it with the MONAI Label venv's python (the client class ships in the monailabel wheel)
against a running ``medseg serve``::

    "$(workflows/label_venv.sh --path)/bin/python" workflows/label_loop.py --url http://127.0.0.1:8000 \
        --model hippocampus_unet3d --upload case_a=/data/a.nii.gz --upload case_b=/data/b.nii.gz ... \
        --truth case_a=/data/a_label.nii.gz ... --bad-labels --worse --report loop.json

Steps (each checked; the first failed check stops it with a message and exit code 1):

1. ``PUT /datastore/image`` uploads (``--upload ID=FILE``; the first one with the route Slicer
   uses, the rest with ``MONAILabelClient.upload_image``); with ``--bad-labels`` first uploads
   that must be refused (truncated, not an image, a path as id);
2. with ``--bad-labels``: labels that must be refused (another grid, a foreign value, another
   position in space, not an image, an unknown image) get 4xx and leave the datastore unchanged;
3. for every unlabelled image: next sample (``/activelearning/random``) -> ``/infer/<model>`` ->
   ``PUT /datastore/label`` with the corrected label (``--truth ID=FILE``, else the model's own
   output with its last labelled slice cleared: a correction; the first one as NRRD, as 3D Slicer
   sends it); the label the server then holds must be the submitted one, voxel for voxel;
4. ``/train/<model>`` (``--epochs``, short) -> ``GET /train/`` until the status is ``DONE`` ->
   ``GET /model/versions/<model>``: the new version is served only if its Dice on the
   validation part is not below the serving version's -> inference uses the serving version;
5. with ``--worse``: a deliberately worse candidate (fine-tuned with a learning rate that wrecks
   the weights) is kept as a candidate and not served; an admin promotes it by hand, a version
   fine-tuned next (from the shipped weights) is better and promoted automatically, and two
   rollbacks restore the worse one and then the version that served before it.

A JSON report (``--report``) lists every step with its timing and results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException


class Failed(Exception):
    """A check of the loop failed."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"expected ID=FILE, got {item!r}")
        out[key] = value
    return out


def as_slicer_nrrd(nifti: Path, out: Path) -> Path:
    """A NIfTI label map saved as 3D Slicer saves a labelmap: gzip NRRD, LPS space directions."""
    import nrrd

    image = nib.load(str(nifti))
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, :]
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:, :3].T,
        "space origin": lps[:, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(out), np.asarray(image.dataobj).astype(np.uint8), header)
    return out


class Loop:
    """One run of the loop against a server (``url``) for one model."""

    def __init__(self, url: str, model: str, workdir: Path, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.workdir = workdir
        self.timeout = timeout
        self.client = MONAILabelClient(self.url, tmpdir=str(workdir))
        self.report: dict[str, Any] = {"steps": [], "ok": False}
        self.t0 = time.monotonic()

    def step(self, name: str, **details: Any) -> None:
        self.report["steps"].append({"step": name, "t": round(time.monotonic() - self.t0, 1), **details})
        print(
            f"[{time.monotonic() - self.t0:7.1f} s] {name} {json.dumps(details) if details else ''}",
            flush=True,
        )

    # -- helpers
    def objects(self) -> dict[str, Any]:
        return self.client.datastore().get("objects", {})

    def final_label_of(self, image_id: str) -> dict[str, Any] | None:
        return (self.objects().get(image_id) or {}).get("labels", {}).get("final")

    def versions(self) -> dict[str, Any]:
        resp = requests.get(f"{self.url}/model/versions/{self.model}", timeout=60)
        check(
            resp.status_code == 200, f"GET /model/versions/{self.model}: {resp.status_code} {resp.text[:300]}"
        )
        return resp.json()

    def stored_label(self, image_id: str) -> np.ndarray:
        path = self.client.download_label(image_id, "final")
        return np.asarray(nib.load(path).dataobj).astype(int)

    def put_label(self, image_id: str, path: Path, name: str | None = None) -> requests.Response:
        with open(path, "rb") as fp:
            return requests.put(
                f"{self.url}/datastore/label",
                params={"image": image_id},
                files={"label": (name or path.name, fp)},
                data={"params": "{}"},
                timeout=300,
            )

    def wait_training(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.client.train_status()
            if status.get("status") in ("DONE", "ERROR", "STOPPED"):
                return status
            time.sleep(3)
        raise Failed(f"training did not finish within {self.timeout:.0f} s: {json.dumps(status)[-500:]}")

    # -- steps
    def bad_uploads(self, path: str) -> None:
        """Uploads the server must refuse (4xx) without adding anything to the datastore."""
        before = set(self.objects())
        data = Path(path).read_bytes()
        cases = [
            ("a truncated image", "cut", "cut.nii.gz", data[: len(data) // 2], 422, "cannot be read"),
            ("not an image file", "notes", "notes.txt", b"text", 415, "NIfTI"),
            ("a path as image id", "../escape", "escape.nii.gz", data, 400, "plain name"),
        ]
        refused = []
        for what, image_id, name, body, status, words in cases:
            resp = requests.put(
                f"{self.url}/datastore/image",
                params={"image": image_id},
                files={"file": (name, body)},
                data={"params": "{}"},
                timeout=300,
            )
            check(
                resp.status_code == status,
                f"upload of {what}: {resp.status_code} (expected {status}) {resp.text[:300]}",
            )
            check(words in resp.text, f"upload of {what}: message {resp.text[:300]!r} lacks {words!r}")
            refused.append({"case": what, "status": resp.status_code})
        check(set(self.objects()) == before, "a refused upload changed the datastore")
        self.step("bad uploads refused", cases=refused)

    def upload(self, images: dict[str, str]) -> None:
        for n, (image_id, path) in enumerate(images.items()):
            if n == 0:  # the route Slicer's "upload" uses
                with open(path, "rb") as fp:
                    resp = requests.put(
                        f"{self.url}/datastore/image",
                        params={"image": image_id},
                        files={"file": (os.path.basename(path), fp)},
                        data={"params": "{}"},
                        timeout=300,
                    )
                check(
                    resp.status_code == 200,
                    f"PUT /datastore/image {image_id}: {resp.status_code} {resp.text[:300]}",
                )
                got = resp.json()["image"]
            else:
                got = self.client.upload_image(path, image_id=image_id)["image"]
            check(got == image_id, f"uploaded {path} as {got!r}, asked for {image_id!r}")
        listed = set(self.objects())
        check(
            set(images) <= listed,
            f"uploaded images missing from the datastore: {sorted(set(images) - listed)}",
        )
        self.step("images uploaded", images=sorted(images))

    def bad_labels(self, image_id: str) -> None:
        """Labels the server must refuse (4xx) without touching the datastore."""
        resp = requests.get(f"{self.url}/datastore/image", params={"image": image_id}, timeout=300)
        check(
            resp.status_code == 200, f"GET /datastore/image {image_id}: {resp.status_code} {resp.text[:300]}"
        )
        image_path = self.workdir / f"{image_id}.nii.gz"
        image_path.write_bytes(resp.content)
        image = nib.load(str(image_path))
        shape = image.shape[:3]
        before = self.final_label_of(image_id)
        cases = []
        wrong_grid = self.workdir / "wrong-grid.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(tuple(s + 3 for s in shape), np.uint8), image.affine), wrong_grid)
        cases.append(("another grid", image_id, wrong_grid, None, 422, "shape"))
        foreign = self.workdir / "foreign-value.nii.gz"
        data = np.zeros(shape, np.uint8)
        data[tuple(s // 2 for s in shape)] = 7
        nib.save(nib.Nifti1Image(data, image.affine), foreign)
        cases.append(("a value that is no label", image_id, foreign, None, 422, "[7]"))
        moved = self.workdir / "moved.nii.gz"
        affine = image.affine.copy()
        affine[:3, 3] += 5.0
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), moved)
        cases.append(("another position in space", image_id, moved, None, 422, "elsewhere in space"))
        text = self.workdir / "notes.txt"
        text.write_text("not a label\n" * 50)
        cases.append(("not an image", image_id, text, "label.nii.gz", 422, "cannot be read"))
        cases.append(("a file type we do not read", image_id, text, "label.txt", 415, "NIfTI"))
        cases.append(("an unknown image", "no_such_image", foreign, None, 404, "not in the datastore"))
        refused = []
        for what, target, path, name, status, words in cases:
            resp = self.put_label(target, path, name)
            detail = resp.text
            check(
                resp.status_code == status,
                f"label with {what}: {resp.status_code} (expected {status}) {detail[:300]}",
            )
            check(words in detail, f"label with {what}: message {detail[:300]!r} lacks {words!r}")
            check(self.final_label_of(image_id) == before, f"label with {what} changed the datastore")
            refused.append(
                {"case": what, "status": resp.status_code, "detail": resp.json().get("detail", "")}
            )
        # the client (as Slicer calls it) gets the refusal as an exception
        try:
            self.client.save_label(image_id, str(wrong_grid))
        except MONAILabelClientException as exc:
            check("422" in str(exc.msg), f"client save_label of another grid: {exc.msg}")
        else:
            raise Failed("the client's save_label of a label on another grid succeeded")
        self.step("bad labels refused", cases=refused)

    def annotate(self, truth: dict[str, str]) -> None:
        """Next sample -> infer -> submit the corrected label, until every image is labelled."""
        done = []
        for _ in range(100):
            sample = self.client.next_sample("random", {})
            image_id = sample.get("id")
            if not image_id:
                break
            check(self.final_label_of(image_id) is None, f"next sample {image_id} is already labelled")
            out, params = self.client.infer(self.model, image_id, {})
            check(out is not None and os.path.isfile(out), f"infer {image_id} returned no label file")
            check(params.get("weights") == self.versions()["serving"], f"infer used {params.get('weights')}")
            if image_id in truth:
                corrected = Path(truth[image_id])
            else:
                pred = nib.load(out)
                data = np.asarray(pred.dataobj).astype(np.uint8)
                nonzero = np.nonzero(data.any(axis=(0, 1)))[0]
                if len(nonzero):
                    data[:, :, nonzero[-1]] = 0  # the clinician's correction: the last slice was wrong
                corrected = self.workdir / f"{image_id}-corrected.nii.gz"
                nib.save(nib.Nifti1Image(data, pred.affine), corrected)
            expected = np.asarray(nib.load(str(corrected)).dataobj).astype(int)
            if not done:  # the first label as 3D Slicer sends it: NRRD in LPS space
                corrected = as_slicer_nrrd(corrected, self.workdir / f"{image_id}.nrrd")
            saved = self.client.save_label(image_id, str(corrected))
            check(saved.get("image") == image_id, f"save_label answered {saved}")
            stored = self.stored_label(image_id)
            check(stored.shape == expected.shape, f"stored label of {image_id} has shape {stored.shape}")
            differ = int((stored != expected).sum())
            check(
                differ == 0,
                f"the stored label of {image_id} differs from the submitted one in {differ} voxels",
            )
            if not done:
                self.step("NRRD label stored", image=image_id, voxels=int((stored > 0).sum()))
            check(
                self.final_label_of(image_id) is not None, f"the label of {image_id} is not in the datastore"
            )
            done.append(image_id)
        check(done, "next sample gave no image")
        unlabelled = [i for i, o in self.objects().items() if not o.get("labels", {}).get("final")]
        check(not unlabelled, f"images left without a label: {unlabelled}")
        self.step("images labelled", images=done)
        self.report["labelled"] = done

    def train(self, params: dict[str, Any], name: str) -> dict[str, Any]:
        serving_before = self.versions()["serving"]
        self.client.train_start(self.model, params)
        status = self.wait_training()
        check(
            status.get("status") == "DONE",
            f"training {name} ended {status.get('status')}: {json.dumps(status)[-1500:]}",
        )
        versions = self.versions()
        newest = versions["versions"][-1]
        check(newest["weights"] != serving_before or newest.get("decision"), f"no new version: {versions}")
        check("decision" in newest, f"the new version has no recorded decision: {newest}")
        promoted = newest["decision"] == "promoted"
        check(
            versions["serving"] == (newest["weights"] if promoted else serving_before),
            f"serving {versions['serving']} contradicts the decision {newest['decision']}",
        )
        if "dice" in newest:
            check(
                promoted == (newest["dice"] >= newest["serving_dice"]),
                f"decision {newest['decision']} contradicts Dice {newest['dice']} vs {newest['serving_dice']}",
            )
        _, params_out = self.client.infer(self.model, self.report["labelled"][0], {})
        check(params_out.get("weights") == versions["serving"], f"inference used {params_out.get('weights')}")
        result = {
            "status": status.get("status"),
            "weights": newest["weights"],
            "decision": newest["decision"],
            "reason": newest.get("reason"),
            "dice": newest.get("dice"),
            "serving_dice": newest.get("serving_dice"),
            "serving_before": serving_before,
            "serving": versions["serving"],
            "validation_images": versions["validation_images"],
        }
        self.step(f"trained {name}", **result)
        return result

    def worse(self, epochs: int) -> None:
        result = self.train({"max_epochs": epochs, "learning_rate": 50.0}, "worse candidate")
        check(result["decision"] == "kept as candidate", f"the wrecked candidate was {result['decision']}")
        check(result["serving"] == result["serving_before"], "the wrecked candidate serves")
        check(result["dice"] < result["serving_dice"], f"the wrecked candidate scored {result['dice']}")
        self.report["worse"] = result
        # an admin may still promote it by hand; a better version trained next is promoted automatically
        resp = requests.post(
            f"{self.url}/model/versions/{self.model}/promote", json={"weights": result["weights"]}, timeout=60
        )
        check(
            resp.status_code == 200 and resp.json()["serving"] == result["weights"],
            f"promote: {resp.text[:300]}",
        )
        better = self.train(
            {"max_epochs": epochs, "model_filename": "model.pt"},
            "from the shipped weights while the worse one serves",
        )
        check(
            better["decision"] == "promoted",
            f"a version better than the serving one was {better['decision']}",
        )
        self.report["better"] = better
        # roll back twice: to the worse version, then to what served before it
        for expected in (result["weights"], result["serving_before"]):
            resp = requests.post(f"{self.url}/model/versions/{self.model}/rollback", timeout=60)
            check(
                resp.status_code == 200 and resp.json()["serving"] == expected,
                f"rollback: {resp.status_code} {resp.text[:300]} (expected {expected})",
            )
        resp = requests.post(
            f"{self.url}/model/versions/{self.model}/promote", json={"weights": "nope.pt"}, timeout=60
        )
        check(resp.status_code == 404, f"promote of an unknown version: {resp.status_code}")
        _, params_out = self.client.infer(self.model, self.report["labelled"][0], {})
        check(
            params_out.get("weights") == result["serving_before"],
            f"after rollback inference used {params_out}",
        )
        self.step("promoted by hand and rolled back", serving=result["serving_before"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--upload", action="append", default=[], metavar="ID=FILE")
    parser.add_argument("--truth", action="append", default=[], metavar="ID=FILE")
    parser.add_argument("--bad-labels", action="store_true")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--worse", action="store_true")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one training may take")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    uploads, truth = pairs(args.upload), pairs(args.truth)
    with tempfile.TemporaryDirectory(prefix="medseg-loop-") as tmp:
        loop = Loop(args.url, args.model, Path(tmp), args.timeout)
        code = 1
        try:
            info = loop.client.info()
            check(
                args.model in info.get("models", {}),
                f"{args.model} not served: {list(info.get('models', {}))}",
            )
            loop.step("server info", models=sorted(info["models"]), datastore=info.get("datastore", {}))
            if uploads:
                if args.bad_labels:
                    loop.bad_uploads(next(iter(uploads.values())))
                loop.upload(uploads)
            if args.bad_labels:
                first = next(iter(uploads), None) or loop.client.next_sample("first", {}).get("id")
                check(bool(first), "the datastore has no image to try bad labels on")
                loop.bad_labels(first)
            loop.annotate(truth)
            loop.report["train"] = loop.train({"max_epochs": args.epochs}, "on the submitted labels")
            if args.worse:
                loop.worse(args.epochs)
            loop.report["versions"] = loop.versions()
            loop.report["ok"] = True
            code = 0
        except (Failed, MONAILabelClientException, requests.RequestException) as exc:
            loop.report["error"] = f"{type(exc).__name__}: {getattr(exc, 'msg', None) or exc}"
            print(f"loop FAILED: {loop.report['error']}", file=sys.stderr, flush=True)
        if args.report:
            Path(args.report).write_text(json.dumps(loop.report, indent=2))
    print("loop OK" if code == 0 else "loop failed", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
