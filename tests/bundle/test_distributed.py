"""multi_gpu_train.json under torchrun: 2 gloo ranks on CPU on real hippocampus cases."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.needs_data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_train_on_disjoint_cases(tmp_path: Path) -> None:
    bundle = REPO / "bundles" / "hippocampus_unet3d"
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/train.json','configs/multi_gpu_train.json']",
        "--bundle_root",
        ".",
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(out / "models"),
        "--train_datalist",
        "$@datalist[5:13]",
        "--val_datalist",
        "$@datalist[0:5:4]",
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--num_workers",
        "0",
        "--progress",
        "False",
    ]
    result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr:
        # A gloo rank could abort at interpreter exit after training had finished (2 of 40 runs
        # with MetaTensor batches fed to the DDP network; 0 of 76 since the bundles' trainers feed
        # plain tensors through medseg.engine.prepare_plain_batch). It matches PyTorch's known
        # teardown problem of gloo work holding tensors with Python references. Kept as a guard:
        # one fresh attempt, not more.
        shutil.rmtree(out, ignore_errors=True)
        result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    seen = {}
    for rank in (0, 1):
        lines = (out / f"cases_rank{rank}.txt").read_text().splitlines()
        seen[rank] = {line.split("\t")[1] for line in lines}
    assert len(seen[0]) == len(seen[1]) == 4  # 8 cases, batch 4: one iteration per rank
    assert not seen[0] & seen[1], "both ranks trained on the same cases"

    # The best model was written once (rank 0), as a plain state dict the bundle network loads.
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    assert not any(key.startswith("module.") for key in state)
