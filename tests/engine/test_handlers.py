"""Training workflow: atomic checkpoints, resume, CSV/PNG logs, deterministic seeding."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medseg.engine import AtomicCheckpointSaver
from medseg.engine.handlers import atomic_torch_save

REPO = Path(__file__).resolve().parents[2]


def test_atomic_save_survives_a_kill_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(3)}, target)
    original = target.read_bytes()

    real_save = torch.save

    def dying_save(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(3)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == original
    assert torch.load(target)["w"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_best_model_file_is_never_missing_between_improvements(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    scores = iter([0.1, 0.5, 0.3, 0.9])
    evaluator = Engine(lambda e, b: None)
    seen: list[bool] = []

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(engine: Engine) -> None:
        engine.state.metrics["dice"] = next(scores)
        with torch.no_grad():
            net.weight.fill_(engine.state.metrics["dice"])

    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": net},
        save_key_metric=True,
        key_metric_name="dice",
        key_metric_filename="model.pt",
    )
    saver.attach(evaluator)

    # ignite removes the previous best before writing the new one; the file must stay readable.
    original_remove = saver._key_metric_checkpoint.save_handler.remove

    def remove_and_check(filename: str) -> None:
        original_remove(filename)
        seen.append((tmp_path / "model.pt").is_file())

    saver._key_metric_checkpoint.save_handler.remove = remove_and_check
    for _ in range(4):
        evaluator.run([0], max_epochs=1)
    assert seen and all(seen)
    state = torch.load(tmp_path / "model.pt")
    assert set(state) == {"weight", "bias"}  # a plain state dict, as bundles ship it
    assert float(state["weight"][0, 0]) == pytest.approx(0.9)


def _train(output_dir: Path, epochs: int, resume: bool = False) -> list[dict[str, str]]:
    from medseg.bundle import open_bundle, train_bundle

    bundle = open_bundle(REPO / "bundles" / "hippocampus_unet3d")
    train_bundle(
        bundle,
        epochs=epochs,
        resume=resume,
        output_dir=output_dir,
        progress=False,
        train_datalist="$@datalist[5:13]",
        val_datalist="$@datalist[:2]",
        val_interval=1,
        num_workers=0,
    )
    with open(output_dir / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_same_seed_same_loss_curve_and_resume(tmp_path: Path) -> None:
    first = _train(tmp_path / "a", epochs=2)
    second = _train(tmp_path / "b", epochs=2)
    assert [r["loss"] for r in first] == [r["loss"] for r in second]
    assert len(first) == 2 and all(float(r["loss"]) > 0 for r in first)
    assert {"val_mean_dice", "val_dice_anterior_hippocampus", "val_dice_posterior_hippocampus", "lr"} <= set(
        first[0]
    )
    assert (tmp_path / "a" / "training_curve.png").stat().st_size > 1000
    assert any((tmp_path / "a" / "tensorboard").iterdir())
    assert (tmp_path / "a" / "models" / "model.pt").is_file()

    # Resume: one epoch, then continue to two from the epoch checkpoint.
    _train(tmp_path / "c", epochs=1)
    assert sorted(os.listdir(tmp_path / "c" / "checkpoints")) == ["checkpoint_epoch=1.pt"]
    rows = _train(tmp_path / "c", epochs=2, resume=True)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # The resumed run continues the checkpoint series; the newest is what a further resume loads.
    assert "checkpoint_epoch=2.pt" in os.listdir(tmp_path / "c" / "checkpoints")


def test_model_ema_follows_the_weights_with_warmed_up_decay() -> None:
    from medseg.engine import ModelEMA

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(network, decay=0.9)
    assert ema.averaged is not network and not any(p.requires_grad for p in ema.averaged.parameters())
    engine = Engine(lambda engine, batch: None)
    ema.attach(engine)
    ema.attach(engine)  # attaching twice must not update twice
    before = [p.detach().clone() for p in ema.averaged.parameters()]
    with torch.no_grad():
        for p in network.parameters():
            p.add_(1.0)
        network[1].running_mean.fill_(5.0)
    engine.run([0], max_epochs=1)  # one iteration: decay min(0.9, 2 / 11)
    weight = 1.0 - 2.0 / 11.0
    for old, new, current in zip(before, ema.averaged.parameters(), network.parameters(), strict=True):
        torch.testing.assert_close(new, old + weight * (current.detach() - old))
    torch.testing.assert_close(ema.averaged[1].running_mean, torch.full((2,), 5.0))  # buffers copied
    assert ModelEMA(network, enabled=False).averaged is network
    with pytest.raises(ValueError):
        ModelEMA(network, decay=1.0)


def test_prepare_plain_batch_strips_metadata_only() -> None:
    from monai.data import MetaTensor

    from medseg.engine import prepare_plain_batch

    image = MetaTensor(torch.rand(2, 1, 4, 4), meta={"filename_or_obj": ["a", "b"]})
    label = MetaTensor(torch.ones(2, 1, 4, 4))
    x, y = prepare_plain_batch({"image": image, "label": label}, device="cpu")
    assert type(x) is torch.Tensor and type(y) is torch.Tensor
    torch.testing.assert_close(x, image.as_tensor())
    torch.testing.assert_close(y, label.as_tensor())


def test_one_hot_d_equals_monai_as_discreted() -> None:
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from medseg.postprocess import OneHotd

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (3, 9, 8, 7), generator=generator).float()  # many ties
    label = MetaTensor(torch.randint(0, 3, (1, 9, 8, 7), generator=generator).to(torch.uint8))
    label.meta["filename_or_obj"] = "case.nii.gz"
    data = {"pred": MetaTensor(scores), "label": label}
    expected = AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=3)(dict(data))
    result = OneHotd(keys=["pred", "label"], argmax=[True, False], num_classes=3)(dict(data))
    for key in ("pred", "label"):
        assert result[key].dtype == torch.float32 and result[key].shape == (3, 9, 8, 7)
        assert torch.equal(result[key].as_tensor(), expected[key].as_tensor())
    assert result["label"].meta["filename_or_obj"] == "case.nii.gz"
    with pytest.raises(ValueError, match="one channel"):
        OneHotd(keys="label", argmax=False, num_classes=3)({"label": scores})
    with pytest.raises(ValueError, match="entries"):
        OneHotd(keys=["pred", "label"], argmax=[True], num_classes=3)
