"""launch/upload.py against a real moto S3 on 127.0.0.1: uploads, skips what is there, re-uploads what changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from birdsed_launch import upload
from birdsed_launch.checks import S3Location

pytest_plugins = ["moto_aws"]

BUCKET = "birds-data"
MB = 1024 * 1024


def make_dataset(root: Path, big_file_mb: int = 0) -> Path:
    """A BirdCLEF layout with small stand-in audio files (the bytes do not matter to an upload)."""
    (root / "train_audio" / "bananaquit").mkdir(parents=True)
    (root / "train_audio" / "pewee").mkdir(parents=True)
    (root / "train_metadata.csv").write_text("primary_label,secondary_labels,rating,filename\n")
    (root / "train_audio" / "bananaquit" / "XC1.ogg").write_bytes(os.urandom(1000))
    (root / "train_audio" / "bananaquit" / "XC2.ogg").write_bytes(os.urandom(2000))
    (root / "train_audio" / "pewee" / "XC3.mp3").write_bytes(os.urandom(3000))
    if big_file_mb:
        (root / "train_audio" / "pewee" / "long.wav").write_bytes(os.urandom(big_file_mb * MB))
    return root


@pytest.fixture
def bucket(aws):
    aws.client("s3").create_bucket(Bucket=BUCKET)
    return aws


def objects(aws, prefix: str) -> dict[str, int]:
    listing = aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


def count_calls(session, operations: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(operations, 0)
    for operation in operations:

        def count(operation=operation, **_):
            counts[operation] += 1

        session.events.register(f"before-call.s3.{operation}", count)
    return counts


def test_uploads_the_dataset_and_prints_the_uri(bucket, tmp_path, capsys):
    source = make_dataset(tmp_path / "birds")
    code = upload.main([str(source), f"s3://{BUCKET}/birdclef"], session=bucket.session())
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"s3://{BUCKET}/birdclef/\n"  # what to pass to submit.py --train
    assert objects(bucket, "birdclef/") == {
        f"birdclef/{path.relative_to(source).as_posix()}": path.stat().st_size
        for path in source.rglob("*")
        if path.is_file()
    }
    assert len(objects(bucket, "birdclef/")) == 4
    body = bucket.client("s3").get_object(Bucket=BUCKET, Key="birdclef/train_audio/pewee/XC3.mp3")["Body"].read()
    assert body == (source / "train_audio" / "pewee" / "XC3.mp3").read_bytes()


def test_skips_objects_of_the_same_size_and_reuploads_changed_ones(bucket, tmp_path):
    source = make_dataset(tmp_path / "birds")
    destination = S3Location(BUCKET, "birdclef/")
    first = upload.sync(bucket.client("s3"), source, destination)
    assert (first.uploaded, first.skipped) == (4, 0)

    session = bucket.session()
    calls = count_calls(session, ["ListObjectsV2", "HeadObject", "PutObject"])
    again = upload.sync(session.client("s3"), source, destination)
    assert (again.uploaded, again.skipped) == (0, 4)
    assert calls == {"ListObjectsV2": 1, "HeadObject": 0, "PutObject": 0}  # one listing, nothing per file

    changed = source / "train_audio" / "bananaquit" / "XC1.ogg"
    changed.write_bytes(os.urandom(1500))
    (source / "train_audio" / "pewee" / "XC4.ogg").write_bytes(b"new")
    third = upload.sync(bucket.client("s3"), source, destination)
    assert (third.uploaded, third.skipped) == (2, 3)
    s3_body = bucket.client("s3").get_object(Bucket=BUCKET, Key="birdclef/train_audio/bananaquit/XC1.ogg")["Body"]
    assert s3_body.read() == changed.read_bytes()


def test_large_files_go_up_in_multipart_parts(bucket, tmp_path):
    source = make_dataset(tmp_path / "birds", big_file_mb=12)
    config = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB)  # S3's smallest part
    summary = upload.sync(bucket.client("s3"), source, S3Location(BUCKET, "big"), config)
    assert summary.uploaded == 5
    head = bucket.client("s3").head_object(Bucket=BUCKET, Key="big/train_audio/pewee/long.wav")
    assert head["ContentLength"] == 12 * MB
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MB


def test_a_prepared_cache_is_uploaded_whole(bucket, tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "shards").mkdir(parents=True)
    (cache / "index.json").write_text("{}")
    (cache / "shards" / "000.npy").write_bytes(os.urandom(4096))
    code = upload.main([str(cache), f"s3://{BUCKET}/cache/", "--quiet"], session=bucket.session())
    assert code == 0, capsys.readouterr().err
    assert objects(bucket, "cache/") == {"cache/index.json": 2, "cache/shards/000.npy": 4096}


@pytest.mark.parametrize(
    ("kind", "destination", "code", "message"),
    [
        ("empty", f"s3://{BUCKET}/x/", 2, "is neither a dataset nor a prepared cache"),
        ("missing", f"s3://{BUCKET}/x/", 2, "no such folder"),
        ("dataset", "birds-data/x", 2, "destination 'birds-data/x' is not an S3 URI"),
        ("dataset", "s3://no-such-bucket/x/", 1, "bucket 'no-such-bucket' does not exist"),
    ],
)
def test_errors_are_one_line(bucket, tmp_path, capsys, kind, destination, code, message):
    source = {"empty": tmp_path, "missing": tmp_path / "nope", "dataset": make_dataset(tmp_path / "birds")}[kind]
    result = upload.main([str(source), destination], session=bucket.session())
    out, err = capsys.readouterr()
    assert (result, out) == (code, "")
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_no_credentials_is_one_line(bucket, tmp_path, capsys):
    source = make_dataset(tmp_path / "birds")
    bucket.drop_credentials()
    result = upload.main([str(source), f"s3://{BUCKET}/x/"], session=bucket.session())
    out, err = capsys.readouterr()
    assert (result, out) == (1, "")
    assert err.startswith("error: no AWS credentials found") and err.count("\n") == 1, err
