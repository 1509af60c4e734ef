"""Ingest: real photographs (scikit-image samples) and planted bad files into a raw dataset."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fourm.data import codecs, ingest_sources
from fourm.data import ingest as ingest_mod
from fourm.data.format import Dataset
from fourm.data.ingest import IngestError, image_id, prepare_image, run_ingest
from fourm.io import sha256_file
from fourm.params import IngestParams, ValidateParams
from fourm.validation.stage import run_validate

skdata = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.integration

CAPTIONS = {
    "a/astronaut.jpg": "an astronaut in a white suit",  # sidecar
    "a/b/coffee.png": "a cup of coffee",  # CSV (wins over its sidecar)
    "chelsea.webp": "a tabby cat",  # CSV
}


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:  # noqa: ANN003
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _exif_jpeg(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A nested folder of good photographs, planted bad files and a caption CSV."""
    root = tmp_path_factory.mktemp("photos") / "src"
    good: dict[str, bytes] = {}
    astronaut_jpg = _encode(skdata.astronaut(), "JPEG", quality=90)
    chelsea = skdata.chelsea()
    chelsea_alpha = np.dstack([chelsea, np.full(chelsea.shape[:2], 255, np.uint8)])
    chelsea_alpha[: chelsea.shape[0] // 2, :, 3] = 0  # top half transparent
    moon16 = skdata.moon().astype(np.uint16) * 257
    hubble = io.BytesIO()
    Image.fromarray(skdata.hubble_deep_field()).quantize(64).save(hubble, format="PNG")  # mode P
    cmyk = io.BytesIO()
    Image.fromarray(skdata.immunohistochemistry()).convert("CMYK").save(cmyk, format="JPEG")
    good["a/astronaut.jpg"] = astronaut_jpg
    good["a/b/coffee.png"] = _encode(skdata.coffee(), "PNG")
    good["chelsea.webp"] = _encode(chelsea, "WEBP", quality=80)
    good["chelsea_alpha.png"] = _encode(chelsea_alpha, "PNG")
    good["gray/camera.png"] = _encode(skdata.camera(), "PNG")
    good["gray/moon16.png"] = _encode(moon16, "PNG")
    good["rocket_exif.JPG"] = _exif_jpeg(np.rot90(skdata.rocket(), k=1), orientation=6)
    good["palette/hubble.png"] = hubble.getvalue()
    good["cmyk.jpeg"] = cmyk.getvalue()
    good["small_ok.png"] = _encode(np.ascontiguousarray(skdata.astronaut()[100:140, 200:250]), "PNG")
    bad = {
        "bad/truncated.jpg": (astronaut_jpg[: len(astronaut_jpg) // 2], "unreadable"),
        "bad/empty.jpg": (b"", "empty_file"),
        "bad/notes.png": (b"these are my notes, not a picture\n", "not_image"),
        "bad/tiny.png": (_encode(np.zeros((4, 4, 3), np.uint8), "PNG"), "too_small"),
        "z_dups/astronaut_copy.jpg": (astronaut_jpg, "duplicate"),
        "a/b/coffee_lossless.webp": (_encode(skdata.coffee(), "WEBP", lossless=True), "duplicate"),
    }
    for rel, data in good.items():
        _write(root, rel, data)
    for rel, (data, _) in bad.items():
        _write(root, rel, data)
    _write(root, "a/astronaut.txt", (CAPTIONS["a/astronaut.jpg"] + "\n").encode())
    _write(root, "a/b/coffee.txt", b"the sidecar loses to the CSV")
    _write(root, "README.md", b"# photos\n")  # ignored
    _write(root, ".DS_Store", b"\0\0")  # hidden: skipped
    _write(root, ".cache/thumb.jpg", astronaut_jpg[:100])  # hidden folder: skipped
    csv_path = root.parent / "captions.csv"
    csv_path.write_text(
        "file,caption\n"
        f"a/b/coffee.png,{CAPTIONS['a/b/coffee.png']}\n"
        f"./chelsea.webp,{CAPTIONS['chelsea.webp']}\n"
        "missing/nothing.jpg,never seen\n"
    )
    return {"root": root, "good": good, "bad": bad, "csv": csv_path}


@pytest.fixture(scope="module")
def ingested(photos: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("out") / "raw"
    params = IngestParams(captions=str(photos["csv"]), samples_per_shard=4)
    report = run_ingest(params, photos["root"], out)
    return {"out": out, "report": report, "params": params}


def _decoded(out: Path) -> dict[str, dict]:
    ds = Dataset.open(out)
    return {
        rec.id: {m: codecs.decode(m, data) for m, data in rec.members.items()} for rec in ds.iter_records()
    }


def test_folder_ingest_keeps_good_images_and_quarantines_bad(photos: dict, ingested: dict) -> None:
    out, report = ingested["out"], ingested["report"]
    good, bad = photos["good"], photos["bad"]
    assert report.num_images == len(good) + len(bad)
    assert report.num_ingested == len(good)
    assert report.quarantined == {
        "empty_file": 1,
        "not_image": 1,
        "unreadable": 1,
        "too_small": 1,
        "duplicate": 2,
    }
    assert report.num_shards == 3  # 10 images, 4 per shard
    assert report.ignored == 1  # README.md; hidden files are skipped, sidecars used
    assert report.captions == {"mapping": 2, "none": 7, "sidecar": 1}
    assert report.captions_unmatched == 1
    assert report.images_per_second > 0

    samples = _decoded(out)
    assert set(samples) == {image_id(data) for data in good.values()}
    for values in samples.values():
        assert set(values) == {"rgb", "caption"}  # a raw set without the synthetic scene
        assert values["rgb"].shape == (64, 64, 3) and values["rgb"].dtype == np.uint8

    quarantine = json.loads((out / "quarantine.json").read_text())
    by_source = {q["source"]: q for q in quarantine}
    assert set(by_source) == set(bad)
    for rel, (data, rule) in bad.items():
        assert by_source[rel]["rules"] == [rule], by_source[rel]
        assert by_source[rel]["id"] == image_id(data) and by_source[rel]["member"] is None
    assert (
        by_source["z_dups/astronaut_copy.jpg"]["reason"]
        == f"duplicate of {image_id(good['a/astronaut.jpg'])}"
    )
    coffee_id = image_id(good["a/b/coffee.png"])
    assert by_source["a/b/coffee_lossless.webp"]["reason"].startswith(
        f"duplicate of {coffee_id} (same pixels"
    )
    assert "truncated" in by_source["bad/truncated.jpg"]["reason"]

    card = json.loads((out / "dataset.json").read_text())
    assert card["kind"] == "raw" and card["modalities"] == ["rgb", "caption"] and card["resolution"] == 64
    assert card["quarantine"]["num"] == 6 and card["quarantine"]["sha256"] == sha256_file(
        out / "quarantine.json"
    )
    rows = Dataset.open(out).rows
    assert set(rows[0]) == {"id", "split", "shard", "index", "caption"} | {
        f"{k}_{m}" for k in ("sha256", "size") for m in ("rgb", "caption")
    }
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert sum(report.splits.values()) == len(good)


def test_captions_exif_alpha_and_modes(photos: dict, ingested: dict) -> None:
    samples = _decoded(ingested["out"])
    good = photos["good"]
    for rel, data in good.items():
        assert samples[image_id(data)]["caption"] == CAPTIONS.get(rel, ""), rel

    # EXIF orientation 6: stored rotated a quarter turn, shown (and ingested) upright.
    rocket = samples[image_id(good["rocket_exif.JPG"])]["rgb"].astype(float)
    upright = prepare_image(_encode(skdata.rocket(), "PNG"), ingested["params"]).astype(float)
    sideways = prepare_image(_encode(np.rot90(skdata.rocket(), k=1), "PNG"), ingested["params"]).astype(float)
    assert np.abs(rocket - upright).mean() < 4 < np.abs(rocket - sideways).mean()

    alpha = samples[image_id(good["chelsea_alpha.png"])]["rgb"]
    assert (alpha[:28] == 255).all()  # transparent top half composited on white
    assert alpha[40:].mean() < 200
    gray = samples[image_id(good["gray/camera.png"])]["rgb"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    moon = samples[image_id(good["gray/moon16.png"])]["rgb"]
    moon8 = prepare_image(_encode(skdata.moon(), "PNG"), ingested["params"])
    assert np.abs(moon.astype(int) - moon8.astype(int)).max() <= 1  # 16-bit scaled, not clipped


def test_validate_reads_an_ingested_set_like_a_generated_one(ingested: dict, tmp_path: Path) -> None:
    report = run_validate("raw", ValidateParams(max_bad_fraction=1.0), ingested["out"], tmp_path / "ok")
    failed = {r.rule: r.failed for r in report.rules if r.failed}
    assert failed == {"caption_length": 7}, report.summary()  # only the images without captions


def test_reingest_gives_identical_bytes(photos: dict, ingested: dict, tmp_path: Path) -> None:
    again = run_ingest(ingested["params"], photos["root"], tmp_path / "raw")
    first, second = ingested["out"], tmp_path / "raw"
    for name in ("dataset.json", "quarantine.json", "manifest.parquet"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    shas = [s["sha256"] for s in json.loads((second / "dataset.json").read_text())["shards"]]
    assert shas == [sha256_file(p) for p in sorted((first / "shards").glob("*.tar"))]
    assert again.to_dict() | {"seconds": 0, "images_per_second": 0, "path": ""} == ingested[
        "report"
    ].to_dict() | {"seconds": 0, "images_per_second": 0, "path": ""}


def test_writer_is_fed_while_reading(photos: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    seen: list[tuple[int, int]] = []  # (files read, shards closed) at every add
    real_read, real_add = ingest_sources._read_file, ingest_mod.DatasetWriter.add

    def read(path: Path) -> bytes:
        reads.append(path.name)
        return real_read(path)

    def add(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        seen.append((len(reads), len(self.shards)))
        real_add(self, *args, **kwargs)

    monkeypatch.setattr(ingest_sources, "_read_file", read)
    monkeypatch.setattr(ingest_mod.DatasetWriter, "add", add)
    run_ingest(IngestParams(samples_per_shard=2), photos["root"], tmp_path / "raw")
    total_reads = len(reads)
    assert seen[0][0] <= 3 < total_reads  # the first sample is written after reading one image
    # shards are closed as the samples come (the open one when the next needs room)
    assert [shards for _, shards in seen] == [max(0, (i - 1) // 2) for i in range(len(seen))]


def test_pad_mode_and_resolution(tmp_path: Path) -> None:
    _write(tmp_path / "src", "rocket.png", _encode(skdata.rocket(), "PNG"))  # 640x427, landscape
    params = IngestParams(mode="pad", resolution=32, pad_color=(255, 0, 0), resample="bicubic")
    run_ingest(params, tmp_path / "src", tmp_path / "raw")
    (rgb,) = [v["rgb"] for v in _decoded(tmp_path / "raw").values()]
    assert rgb.shape == (32, 32, 3)
    assert (rgb[:4] == [255, 0, 0]).all() and (rgb[-4:] == [255, 0, 0]).all()  # bars above and below
    assert not (rgb[16] == [255, 0, 0]).all()


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.glob(f".{out.name}*"))


def test_top_level_bad_input_raises_and_writes_nothing(photos: dict, tmp_path: Path) -> None:
    out = tmp_path / "out" / "raw"
    with pytest.raises(IngestError, match="source_missing") as err:
        run_ingest(IngestParams(), tmp_path / "nope", out)
    assert str(tmp_path / "nope") in str(err.value)

    empty = tmp_path / "empty"
    _write(empty, "notes/README.md", b"nothing here")
    with pytest.raises(IngestError, match="no_images"):
        run_ingest(IngestParams(), empty, out)

    bad_csv = tmp_path / "caps.csv"
    bad_csv.write_text("path,caption\na.jpg,x\n")
    with pytest.raises(IngestError, match=r"caps\.csv: captions_column: no column 'file'"):
        run_ingest(IngestParams(captions=str(bad_csv)), photos["root"], out)
    bad_jsonl = tmp_path / "caps.jsonl"
    bad_jsonl.write_text('{"file": "a.jpg", "caption": "x"}\n{"file": "b.jpg"}\n')
    with pytest.raises(IngestError, match=r"caps\.jsonl:2: captions_column"):
        run_ingest(IngestParams(captions=str(bad_jsonl)), photos["root"], out)
    with pytest.raises(IngestError, match="captions_missing"):
        run_ingest(IngestParams(captions=str(tmp_path / "missing.csv")), photos["root"], out)

    mixed = tmp_path / "mixed"
    _write(mixed, "a.png", _encode(skdata.camera(), "PNG"))
    _write(mixed, "b.tar", _tar([]))
    with pytest.raises(IngestError, match="mixed_source"):
        run_ingest(IngestParams(), mixed, out)
    assert run_ingest(IngestParams(source_format="images"), mixed, tmp_path / "m").ignored == 1

    only_bad = tmp_path / "only_bad"
    _write(only_bad, "x.png", b"text")
    _write(only_bad, "y.jpg", b"")
    with pytest.raises(IngestError, match=r"nothing_ingested: all 2 images were rejected"):
        run_ingest(IngestParams(), only_bad, out)
    _assert_nothing_written(out)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wds_members() -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    a = _encode(skdata.astronaut(), "JPEG", quality=90)
    b = _encode(skdata.coffee(), "PNG")
    c = _encode(skdata.chelsea(), "WEBP")
    members = [
        ("000000.jpg", a),
        ("000000.txt", b"an astronaut"),
        ("000001.caption", b"coffee, black"),  # caption before the image: same key still
        ("000001.png", b),
        ("000002.webp", c),
        ("000002.json", b"{}"),  # ignored
        ("000003.jpg", a[:2000]),  # truncated
        ("000004.txt", b"a caption without an image"),  # ignored
    ]
    return members, {image_id(a): "an astronaut", image_id(b): "coffee, black", image_id(c): ""}


def test_webdataset_tars(tmp_path: Path) -> None:
    members, expected = _wds_members()
    shards = tmp_path / "wds"
    _write(shards, "part-000.tar", _tar(members))
    d = _encode(skdata.camera(), "PNG")
    broken = _tar([("010000.png", d), ("010001.png", _encode(skdata.moon(), "PNG"))])
    second = 512 + -(-len(d) // 512) * 512  # where the 2nd member's header starts
    _write(shards, "part-001.tar", broken[: second + 512 + 700])  # breaks off in the 2nd member

    report = run_ingest(IngestParams(), shards, tmp_path / "raw")
    assert report.num_ingested == 4 and report.quarantined == {"unreadable": 1, "unreadable_tar": 1}
    assert report.ignored == 2 and report.captions == {"member": 2, "none": 2}
    samples = _decoded(tmp_path / "raw")
    assert {k: v["caption"] for k, v in samples.items()} == expected | {image_id(d): ""}
    quarantine = json.loads((tmp_path / "raw" / "quarantine.json").read_text())
    assert [(q["source"], q["member"], q["rules"]) for q in quarantine] == [
        ("part-000.tar", "000003.jpg", ["unreadable"]),
        ("part-001.tar", None, ["unreadable_tar"]),
    ]

    # a glob of tars and a single tar give the same dataset for the same shard
    one = run_ingest(IngestParams(), str(shards / "part-000.*"), tmp_path / "glob")
    assert one.num_ingested == 3
    assert set(_decoded(tmp_path / "glob")) == set(expected)


def test_webdataset_from_s3(store, tmp_path: Path) -> None:  # noqa: ANN001
    members, expected = _wds_members()
    bucket, prefix = "fourm-test-ingest", f"wds-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, f"{prefix}/shard-000.tar", _tar(members))
    report = run_ingest(IngestParams(), f"s3://{bucket}/{prefix}", tmp_path / "raw", store=store)
    assert report.num_ingested == 3 and report.quarantined == {"unreadable": 1}
    assert {k: v["caption"] for k, v in _decoded(tmp_path / "raw").items()} == expected
    quarantine = json.loads((tmp_path / "raw" / "quarantine.json").read_text())
    assert quarantine[0]["source"] == f"s3://{bucket}/{prefix}/shard-000.tar"


def test_cli_ingest_records_the_dataset_and_refuses_a_missing_source(photos: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from fourm.registry.api import Registry

    url = f"sqlite:///{tmp_path / 'reg.db'}"
    env = {**os.environ, "FOURM_REGISTRY_URL": url, "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "fourm",
        "data",
        "ingest",
        str(photos["root"]),
        "--out",
        str(tmp_path / "raw"),
    ]
    proc = subprocess.run(
        [*cmd, "--report", str(tmp_path / "r.json")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert f"ingested {len(photos['good'])} of" in proc.stdout and "quarantined:" in proc.stdout
    assert "images_per_second" not in (tmp_path / "r.json").read_text()  # reports are DVC metrics
    with Registry(url) as reg:
        (run,) = reg.runs("ingest")
        _, outs = reg.run_io(run.id)
    assert run.status == "succeeded" and outs[0].kind == "dataset"
    missing = subprocess.run(
        [*cmd[:5], str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (
        missing.returncode == 1 and missing.stderr.startswith("error:") and "source_missing" in missing.stderr
    )
    assert not (tmp_path / "x").exists()
