"CIFAR from the rebuilt copy, on-device augmentation, splits, and the errors for missing or corrupt files."
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from identity_study import data as D

DATA = D.data_root()


def test_cifar10_loads_from_the_rebuilt_copy_with_a_warning():
    assert D.cifar_files_status("cifar10", DATA) == "rebuilt"
    D._warned_rebuilt.discard("cifar10")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = D.load_cifar("cifar10", train=True)
        D.load_cifar("cifar10", train=False)
    msgs = [str(w.message) for w in caught if "rebuilt copy" in str(w.message)]
    assert len(msgs) == 1 and "not bit-comparable" in msgs[0]           # once, not per load
    assert x.shape == (50_000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [5000] * 10
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]            # the official data_batch order


def test_cifar100_has_fine_labels():
    x, y = D.load_cifar("cifar100", train=False)
    assert x.shape == (10_000, 3, 32, 32) and y.max() == 99 and torch.bincount(y).tolist() == [100] * 100


def _copy_cifar10(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DATA / "cifar-10-batches-py", root / "cifar-10-batches-py")
    return root


def test_truncated_batch_file_is_named_in_the_error(tmp_path):
    root = _copy_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(D.DataError) as e:
        D.load_cifar("cifar10", root)
    assert "data_batch_3 is corrupt or truncated" in str(e.value) and "rebuild" in str(e.value)


def test_corrupt_batch_file_is_named_in_the_error(tmp_path):
    root = _copy_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "test_batch"
    raw = bytearray(batch.read_bytes())
    raw[5000] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match="test_batch is corrupt"):
        D.load_cifar("cifar10", root, train=False)


class _Planted:
    "What a planted pickle holds: unpickling it calls open(marker, 'w'), i.e. runs code of the file's choosing."
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_planted_pickle_is_refused_even_when_the_folders_json_vouches_for_it(tmp_path):
    "The rebuilt copy's md5s ship in the package: the folder's own torchvision_layout_md5.json counts for nothing."
    import hashlib
    import json
    import pickle
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Planted(probe)))
    assert probe.exists()                                  # the planted file would run code if it were unpickled
    root, marker = tmp_path / "data", tmp_path / "marker"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in (DATA / "cifar-10-batches-py").iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "data_batch_1").unlink()
    (folder / "data_batch_1").write_bytes(pickle.dumps(_Planted(marker)))
    vouch = {f"cifar-10-batches-py/{f.name}": hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    (root / "torchvision_layout_md5.json").write_text(json.dumps(vouch))
    planted_md5 = vouch["cifar-10-batches-py/data_batch_1"]
    for load in (D.cifar_dataset, D.load_cifar):
        with pytest.raises(D.DataError) as e:
            load("cifar10", root)
        msg = str(e.value)
        assert "data_batch_1" in msg and planted_md5 in msg and D.REBUILT_MD5["cifar-10-batches-py/data_batch_1"] in msg
        assert "Pillow" in msg and "make data" in msg, msg
    assert not marker.exists()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_rebuilt_copy_is_recognised_from_the_packages_md5s_alone(name, tmp_path):
    "The copy `make data` rebuilds (constraints.txt's Pillow) under the data root, linked into a folder with no json."
    base = D.CIFAR[name].base_folder
    if D.cifar_files_status(name, DATA) == "official":
        pytest.skip("the data root holds the official files, not the rebuilt copy")
    root = tmp_path / "data"
    (root / base).mkdir(parents=True)
    for f in (DATA / base).iterdir():
        (root / base / f.name).symlink_to(f)
    assert D.cifar_files_status(name, root) == "rebuilt"


def test_missing_data_offline_says_both_ways_to_fix_it(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(D.CIFAR10, "download", offline)
    with pytest.raises(D.DataError) as e:
        D.load_cifar("cifar10", tmp_path / "empty")
    msg = str(e.value)
    assert "could not be downloaded" in msg and "Network is unreachable" in msg
    assert "python -m identity_study.data --shared" in msg and "IDENTITY_STUDY_DATA" in msg


def test_data_root_precedence(monkeypatch):
    monkeypatch.setenv(D.DATA_ENV, "/from/env")
    assert D.data_root("/explicit") == Path("/explicit") and D.data_root() == Path("/from/env")
    monkeypatch.delenv(D.DATA_ENV)
    assert D.data_root() == Path("data")


def test_augmentation_shapes_and_statistics():
    x, y = D.load_cifar("cifar10", train=True)
    for kind in D.NORMALIZATIONS:
        mean, std = D.normalization_stats(x, kind)
        data = D.DeviceCifar(x, y, mean=mean, std=std, seed=1)
        xb, yb = data.batch(0, 2048)
        assert xb.shape == (2048, 3, 32, 32) and yb.shape == (2048,) and xb.dtype == torch.float32
        assert xb.mean((0, 2, 3)).abs().max() < 0.05          # centred (the zero border is the mean colour)
        if kind == "per_channel":
            assert ((xb.std((0, 2, 3)) > 0.85) & (xb.std((0, 2, 3)) < 1.02)).all()
    # the crops are shifted windows: comparing with the un-augmented images, most are not in place
    plain = D.DeviceCifar(x, y, augment=False, seed=1)
    raw, _ = plain.batch(0, 256)
    aug, _ = D.DeviceCifar(x, y, augment=True, seed=1).batch(0, 256)
    moved = (aug != raw).flatten(1).any(1).float().mean()
    assert 0.9 < moved <= 1.0                 # 1/81 of crops are unshifted and half of those unflipped


def test_flips_and_offsets_are_uniform():
    g = D._generator(7)
    x = torch.zeros(4000, 1, 4, 4)
    x[:, :, :, 0] = 1                          # a marker in the left column
    out = D.random_crop_flip(x, g, padding=0)
    flipped = out[:, 0, 0, -1] == 1
    assert abs(flipped.float().mean() - 0.5) < 0.03


def test_same_iteration_same_batch_and_sharding():
    x, y = D.load_cifar("cifar10", train=False)
    a = D.DeviceCifar(x, y, seed=3).batch(123, 64)
    b = D.DeviceCifar(x, y, seed=3).batch(123, 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    shards = [D.DeviceCifar(x, y, seed=3, rank=r, world_size=2).batch(123, 64) for r in (0, 1)]
    assert torch.equal(torch.stack([s[1] for s in shards], 1).flatten(), a[1])


def test_validation_split_is_held_out_of_training():
    (tx, ty), (vx, vy) = D.cifar_splits("cifar10", eval_split="val")
    assert len(ty) == 45_000 and len(vy) == 5_000
    train_keys = {img.numpy().tobytes() for img in tx}
    assert sum(img.numpy().tobytes() in train_keys for img in vx) < 5     # CIFAR has a few exact duplicates
    (tx2, _), (vx2, _) = D.cifar_splits("cifar10", eval_split="val")
    assert torch.equal(vx, vx2)                                          # the same 5k for every run


def test_tiny_imagenet_in_imagenet_layout():
    if not (DATA / "tiny-imagenet-200").is_dir():
        pytest.skip("Tiny ImageNet not rebuilt (make data)")
    folders = D.imagenet_folders_from_tiny()
    train, test, sampler = D.imagenet_loaders(folders, batch_size=16, workers=2, crop=56, test="224@256")
    xb, yb = next(iter(train))
    xt, yt = next(iter(test))
    assert xb.shape == (16, 3, 56, 56) and xt.shape == (16, 3, 56, 56)
    assert len(train.dataset.classes) == 200 and len(test.dataset) == 10_000
    sampler.set_epoch(0, start_step=10)
    assert len(list(iter(sampler))) == (100_000 // 16 - 10) * 16
