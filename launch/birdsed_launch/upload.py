"""Upload a BirdCLEF-style dataset, or a prepared cache, to S3 for `submit.py --train`.

    python launch/upload.py ./birdclef-2024 s3://my-bucket/birdclef-2024/

SRC must hold `train_metadata.csv` (a raw dataset: + train_audio/) or a cache index (`index.json` or
`cache.json`) at its top; every file under it is uploaded, keeping the folder layout. Objects
already in S3 with the same key and size are skipped (one listing, no request per file), so an
interrupted upload resumes and a re-run uploads only what changed size. Large files go up in
parallel multipart transfers. The S3 URI to pass to `--train` is printed on stdout at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.s3.transfer import ProgressCallbackInvoker, TransferConfig, create_transfer_manager
from botocore.config import Config
from tqdm import tqdm

from birdsed_launch import checks, cli
from birdsed_launch.checks import S3Location, UsageError

logger = logging.getLogger("birdsed.upload")

DATASET_MARKERS = ("train_metadata.csv", "index.json", "cache.json")
MB = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    path: Path
    key: str
    size: int


@dataclass(frozen=True)
class UploadSummary:
    uploaded: int
    uploaded_bytes: int
    skipped: int
    skipped_bytes: int


def check_source(source: Path) -> None:
    if not source.is_dir():
        raise UsageError(f"{source}: no such folder")
    if not any((source / marker).is_file() for marker in DATASET_MARKERS):
        raise UsageError(
            f"{source} is neither a dataset nor a prepared cache: expected {' or '.join(DATASET_MARKERS)} at its top"
        )


def local_files(source: Path, prefix: str) -> Iterator[LocalFile]:
    """Every file under `source` (following folder links), keyed `prefix/relative/path`."""
    for folder, _, names in sorted(os.walk(source, followlinks=True)):
        for name in sorted(names):
            path = Path(folder, name)
            relative = path.relative_to(source).as_posix()
            yield LocalFile(path, f"{prefix}{relative}", path.stat().st_size)


def existing_sizes(s3, destination: S3Location) -> dict[str, int]:
    """Key -> size of every object under the prefix, in one paginated listing."""
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=destination.bucket, Prefix=destination.key):
        sizes.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return sizes


def upload_files(s3, bucket: str, files: Sequence[LocalFile], config: TransferConfig, quiet: bool) -> None:
    total = sum(item.size for item in files)
    with (
        # disable=None: no bar when stderr is not a terminal (CI logs), as tqdm decides.
        tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="upload", disable=True if quiet else None
        ) as bar,
        create_transfer_manager(s3, config) as manager,
    ):
        # s3transfer reports bytes from its worker threads; tqdm.update is thread-safe.
        progress = [ProgressCallbackInvoker(bar.update)]
        futures = [manager.upload(str(item.path), bucket, item.key, subscribers=progress) for item in files]
        for future in futures:
            future.result()  # re-raises the first failed transfer


def sync(
    s3, source: Path, destination: S3Location, config: TransferConfig | None = None, quiet: bool = False
) -> UploadSummary:
    """Upload what is missing or changed in size under `destination`; returns what was done."""
    check_source(source)
    destination = destination.as_prefix()
    existing = existing_sizes(s3, destination)
    files = list(local_files(source, destination.key))
    todo = [item for item in files if existing.get(item.key) != item.size]
    skipped = [item for item in files if existing.get(item.key) == item.size]
    logger.info(
        "%d files (%.1f MB) to upload to %s, %d already there (%.1f MB) skipped",
        len(todo),
        sum(item.size for item in todo) / MB,
        destination.uri,
        len(skipped),
        sum(item.size for item in skipped) / MB,
    )
    if todo:
        upload_files(s3, destination.bucket, todo, config or TransferConfig(), quiet)
    return UploadSummary(len(todo), sum(i.size for i in todo), len(skipped), sum(i.size for i in skipped))


def transfer_config(workers: int) -> TransferConfig:
    """Multipart above 64 MB in 64 MB parts; `workers` transfers (files or parts) at once."""
    return TransferConfig(multipart_threshold=64 * MB, multipart_chunksize=64 * MB, max_concurrency=workers)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineErrorParser(
        prog="upload.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="dataset folder (train_metadata.csv) or prepared cache folder")
    parser.add_argument("destination", help="s3://bucket/prefix/ to upload into")
    parser.add_argument("--workers", type=int, default=16, help="parallel transfers (default 16)")
    parser.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your AWS config)")
    parser.add_argument("--profile", help="AWS named profile")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="library logs and tracebacks")
    return parser


def main(
    argv: Sequence[str] | None = None, session: boto3.Session | None = None, environ: Mapping[str, str] = os.environ
) -> int:
    """Entry point; `session` lets tests (and embedding code) supply their own boto3 session."""
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)

    def body() -> int:
        destination = checks.parse_s3_uri(args.destination, "destination")
        check_source(args.source)
        if args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        aws = session or boto3.Session(region_name=args.region or environ.get("AWS_REGION"), profile_name=args.profile)
        checks.check_region(aws)
        checks.check_credentials(aws)
        # One pooled connection per parallel transfer (urllib3 warns and reconnects otherwise).
        s3 = aws.client("s3", config=Config(max_pool_connections=args.workers))
        checks.check_bucket(aws, destination, "destination")
        sync(s3, args.source, destination, transfer_config(args.workers), args.quiet)
        print(destination.as_prefix().uri)  # what to pass to submit.py --train
        return 0

    return cli.run_command(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
