"""Image folders: a tiny folder of PNG and JPEG files written here streams through lesions and
path gradients with the numbers the same images give in memory; bad folders and files give one
line; limit keeps a seeded, class-balanced subset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import pathens
from pathens import imagefolder, lesion
from nets import VARIANTS, small_resnet


def write_folder(root, per_class=(4, 4, 3), size=(20, 24)):
    rng = np.random.default_rng(0)
    for c, count in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(pixels).save(root / f"class{c}" / f"img{i}{suffix}")
    return root


def in_memory(loader):
    """Every image of the folder through the same transform, in folder order."""
    ds = loader.dataset
    x = torch.stack([ds.transform(Image.open(p).convert("RGB")) for p, _ in ds.samples])
    return x, torch.tensor([c for _, c in ds.samples])


def test_a_streamed_folder_gives_the_numbers_of_the_images_in_memory(tmp_path):
    root = write_folder(tmp_path / "val")
    stream = imagefolder.loader(root, image_size=16, batch_size=4, workers=2)
    assert len(stream.dataset) == 11 and stream.dataset.classes == ["class0", "class1", "class2"]
    x, y = in_memory(stream)
    assert x.shape == (11, 3, 16, 16)
    view = pathens.wrap(small_resnet(14, **VARIANTS[0][1]).float(), example_input=x[:2])
    a = lesion.delete_each(view, stream, progress=False)
    b = lesion.delete_each(view, (x, y), progress=False)
    assert [r["errors"] for r in a.rows] == [r["errors"] for r in b.rows]
    np.testing.assert_allclose([r["loss"] for r in a.rows], [r["loss"] for r in b.rows],
                               rtol=1e-5)
    ga = pathens.path_gradients(view, stream, progress=False)
    gb = pathens.path_gradients(view, x, y, progress=False)
    np.testing.assert_allclose(ga.total, gb.total, rtol=1e-4)
    assert ga.config["num_examples"] == 11


def test_the_eval_transform_follows_the_model_and_the_overrides(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False)
    _, info = imagefolder.eval_transform(model)
    assert info["source"] == "timm pretrained_cfg" and info["image_size"] == 224
    assert info["crop_pct"] == model.pretrained_cfg["crop_pct"]
    _, info = imagefolder.eval_transform(model, image_size=96, crop_pct=1.0, normalize="none")
    assert (info["image_size"], info["crop_pct"], info["mean"]) == (96, 1.0, [0.0, 0.0, 0.0])
    transform, info = imagefolder.eval_transform()  # resize 256, centre crop 224, ImageNet
    assert (info["image_size"], info["resize"], info["normalize"]) == (224, 256, "imagenet")
    image = Image.fromarray(np.full((300, 400, 3), 255, np.uint8))
    out = transform(image)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out[:, 100, 100], expected)


def test_an_undecodable_file_is_named_or_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "val")
    (root / "class1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(pathens.PathensError, match=r"broken\.jpg cannot be decoded as an image"):
        imagefolder.loader(root, image_size=16, batch_size=4, workers=0)  # before any batch
    skipping = imagefolder.loader(root, image_size=16, batch_size=4, workers=2, skip_bad=True)
    assert skipping.description["skipped"] == 1 and len(skipping.dataset) == 11
    seen = sum(len(y) for _, y in skipping)
    assert seen == 11 and [p.endswith("broken.jpg") for p in skipping.skipped] == [True]
    sum(len(y) for _, y in skipping)  # a second pass counts the file once
    assert len(skipping.skipped) == 1
    # a file whose header reads but whose pixels do not is found in the pass
    (root / "class1" / "broken.jpg").unlink()
    good = imagefolder.loader(root, image_size=16, batch_size=4, workers=0)
    data = (root / "class2" / "img2.jpg").read_bytes()
    (root / "class2" / "img2.jpg").write_bytes(data[:int(0.9 * len(data))])
    with pytest.raises(pathens.PathensError, match=r"img2\.jpg cannot be decoded as an image"):
        list(good)


def test_folders_without_classes_or_images_are_refused(tmp_path):
    with pytest.raises(pathens.PathensError, match="does not exist"):
        imagefolder.loader(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(pathens.PathensError, match="no class subfolders"):
        imagefolder.loader(tmp_path / "flat")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(pathens.PathensError, match="no images"):
        imagefolder.loader(tmp_path / "empty")


def test_limit_is_a_seeded_subset_spread_over_the_classes(tmp_path):
    root = write_folder(tmp_path / "val", per_class=(6, 6, 2))
    a = imagefolder.loader(root, limit=7, seed=3, workers=0).dataset.samples
    b = imagefolder.loader(root, limit=7, seed=3, workers=0).dataset.samples
    c = imagefolder.loader(root, limit=7, seed=4, workers=0).dataset.samples
    assert a == b and a != c
    counts = np.bincount([label for _, label in a], minlength=3)
    assert counts.tolist() == [3, 2, 2]  # round-robin: 7 = 3 + 2 + 2
    assert len(imagefolder.loader(root, limit=100, workers=0).dataset) == 14
