"""A bad input found late never costs a finished folder: every image is checked (header, labels,
class folders) before --out is touched, and a fault that only shows in a late batch (a JPEG
truncated after its header), an interrupt or an error in a --force run puts the results it was
replacing back, byte for byte, so that the finished run still resumes."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from cli_helpers import refused, run, snapshot
from pathens.cli import run_folder as outputs

MODEL = """\
import torch, pathens
def make():
    torch.manual_seed(0)
    return pathens.cifar_resnet(8, width=4, num_classes=2)
"""


@pytest.fixture
def folder(tmp_path):
    """Two classes of six 12x12 images (JPEGs: a truncated one still has a good header), and
    the model file."""
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "val" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / "val" / f"c{c}" / f"{i}.jpg", quality=95)
    (tmp_path / "m.py").write_text(MODEL)
    return tmp_path


def argv(d, out, trials=2):
    return ["lesion", "--model", f"{d / 'm.py'}:make", "--data", "imagefolder", "--root",
            d / "val", "--image-size", "8", "--workers", "0", "--batch-size", "4", "--ks", "1",
            "--trials", str(trials), "--quiet", "--out", out]


def finished(capsys, d):
    out = d / "out"
    code, _, err = run(capsys, *argv(d, out))
    assert code == 0, err
    return out, snapshot(out)


def truncate(path, keep=0.9):
    """Cut a JPEG's last tenth: its header still reads, its pixels fail to decode."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with Image.open(path) as im:  # the header is whole ...
        assert im.size == (12, 12)
    with pytest.raises(OSError, match="truncated"):  # ... the pixels are not
        Image.open(path).convert("RGB")


def test_a_late_bad_batch_under_force_puts_the_finished_run_back(capsys, folder):
    out, files = finished(capsys, folder)
    image = folder / "val" / "c1" / "5.jpg"
    whole, stat = image.read_bytes(), image.stat()
    truncate(image)  # the last image: the 3rd batch of 4
    err = refused(capsys, *argv(folder, out, trials=3), "--force",
                  match="5.jpg cannot be decoded as an image (OSError: image file is truncated")
    assert err.endswith(f"; the previous results in {out} are kept as they were (--force "
                        f"replaces them only when the new run finishes)\n")
    assert snapshot(out) == files  # config.json, sweeps and tables as the finished run left them
    assert not (out / outputs.REPLACED).exists()
    refused(capsys, *argv(folder, out), "--resume", "--skip-bad-images",
            match="other settings (--skip-bad-images")  # the folder is still the first run
    image.write_bytes(whole)  # the image as it was: the first run resumes (all rows on disk)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, _, err = run(capsys, *argv(folder, out), "--resume")
    assert code == 0, err
    assert {k: v for k, v in snapshot(out).items() if k.suffix == ".csv"} == \
        {k: v for k, v in files.items() if k.suffix == ".csv"}


def test_an_interrupted_force_run_puts_the_finished_run_back(capsys, folder, monkeypatch):
    out, files = finished(capsys, folder)
    from pathens import lesion

    def interrupted(*a, **kw):
        assert not (out / "delete_each.csv").exists()  # the new run writes an emptied folder
        raise KeyboardInterrupt
    monkeypatch.setattr(lesion, "delete_random", interrupted)
    code, _, err = run(capsys, *argv(folder, out, trials=3), "--force")
    assert code == 130 and f"the previous results in {out} are kept as they were" in err, err
    assert snapshot(out) == files


def test_a_finished_force_run_replaces_everything(capsys, folder):
    out, _ = finished(capsys, folder)
    (out / "stale.txt").write_text("left by the old run")
    code, _, err = run(capsys, *argv(folder, out, trials=3), "--force")
    assert code == 0, err
    assert not (out / "stale.txt").exists() and not (out / outputs.REPLACED).exists()
    assert json.loads((out / "config.json").read_text())["settings"]["trials"] == 3


def test_a_killed_force_run_leaves_the_last_results_set_aside(capsys, folder):
    """As a run killed outright leaves it: its own files in the folder, the finished run's in
    .pathens-replaced. A later --force that fails puts the finished run back; one that
    finishes deletes it."""
    out, files = finished(capsys, folder)
    aside = out / outputs.REPLACED
    aside.mkdir()
    for p in list(out.iterdir()):
        if p.name not in (aside.name, ".pathens.lock"):
            p.rename(aside / p.name)
    (out / "config.json").write_text(json.dumps(dict(command="lesion", settings={"trials": 9})))
    (out / "sweeps").mkdir()
    (out / "sweeps" / "delete_each.csv").write_text("the killed run's rows\n")
    refused(capsys, *argv(folder, out), match="already holds results")  # not empty
    truncate(folder / "val" / "c1" / "5.jpg")
    refused(capsys, *argv(folder, out, trials=3), "--force", match="kept as they were")
    assert snapshot(out) == files
    code, _, err = run(capsys, *argv(folder, out, trials=3), "--force", "--skip-bad-images")
    assert code == 0, err
    assert not aside.exists()


@pytest.mark.parametrize("spoil,match", [
    (lambda v: (v / "c1" / "5.jpg").write_bytes(b""), "5.jpg cannot be decoded as an image"),
    (lambda v: (v / "c1" / "4.jpg").write_bytes(b"\x89PNG\r\n\x1a\n"), "4.jpg cannot be decoded"),
    (lambda v: (v / "c2").mkdir() or (v / "c1" / "0.jpg").rename(v / "c2" / "0.jpg"),
     "has 3 class folders but the model has 2 classes: its folder 'c2' is class 2"),
    (lambda v: (v / "c2").mkdir(), "the class folder c2 holds no images"),
])
def test_bad_inputs_are_found_before_out_is_touched(capsys, folder, spoil, match):
    out, files = finished(capsys, folder)
    spoil(folder / "val")
    refused(capsys, *argv(folder, out, trials=3), "--force", match=match)
    assert snapshot(out) == files
    refused(capsys, *argv(folder, folder / "new"), match=match)
    assert not (folder / "new").exists()


def test_a_late_failure_leaves_no_new_folder(capsys, folder):
    truncate(folder / "val" / "c1" / "5.jpg")
    refused(capsys, *argv(folder, folder / "new"), match="5.jpg cannot be decoded")
    assert not (folder / "new").exists()  # not even a config.json


def test_hidden_folders_and_files_are_not_classes_or_images(capsys, folder):
    """`.ipynb_checkpoints` sorts first: counted as a class it would shift every label by one
    (torchvision's ImageFolder counts it, and refuses it when empty); pathens ignores hidden
    folders and files, so the run is the one without them."""
    out, files = finished(capsys, folder)
    (folder / "val" / ".ipynb_checkpoints").mkdir()
    (folder / "val" / "c0" / ".hidden").mkdir()
    (folder / "val" / "c0" / ".hidden" / "x.jpg").write_bytes(b"")
    (folder / "val" / "c1" / "._5.jpg").write_bytes(b"AppleDouble")  # macOS resource fork
    code, _, err = run(capsys, *argv(folder, folder / "again"))
    assert code == 0, err
    for name in ("delete_each.csv", "delete_random.csv"):
        assert (folder / "again" / name).read_bytes() == files[type(out)(name)]
