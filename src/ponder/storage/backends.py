"""Where checkpoints and artifacts live: a local directory or an `s3://bucket/prefix`, behind one small interface.

`open_storage(url)` gives a `Storage` whose keys are '/'-separated paths under the URL. S3 goes through boto3 with
an optional endpoint URL (MinIO, moto, on-prem object stores: `endpoint_url` or AWS_ENDPOINT_URL), standard retries
with backoff, and multipart transfers for large files (boto3's transfer manager). Credentials come from boto3's usual
chain (environment, shared config, instance or pod role), never from the Ponder config.

Atomicity is the checkpoint store's job (`storage/checkpoints.py`: data first, manifest last); this layer only
promises that a `put` either completes or raises.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Protocol

MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 16 << 20


class Storage(Protocol):
    url: str

    def put_file(self, local: Path, key: str) -> None: ...
    def get_file(self, key: str, local: Path) -> None: ...
    def put_text(self, key: str, text: str) -> None: ...
    def get_text(self, key: str) -> Optional[str]: ...  # None if the key does not exist
    def list(self, prefix: str) -> list[str]: ...  # keys under prefix, sorted
    def delete_prefix(self, prefix: str) -> None: ...


def open_storage(url: str, endpoint_url: Optional[str] = None, timeout_s: Optional[float] = None) -> Storage:
    """`s3://bucket/prefix` or a local directory (created if missing). `timeout_s`: S3 calls give up after it, once,
    instead of retrying with backoff (checks that must not hang)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"storage URL {url!r} has no bucket; use s3://bucket/prefix")
        return S3Storage(bucket, prefix.strip("/"), endpoint_url, timeout_s)
    if "://" in url:
        raise ValueError(f"storage URL {url!r}: use a local path or s3://bucket/prefix")
    return LocalStorage(Path(url))


class LocalStorage:
    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def put_file(self, local: Path, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(local, partial)
        os.replace(partial, target)  # a reader sees the old file or the whole new one

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / key, local)

    def put_text(self, key: str, text: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(text)
        os.replace(partial, target)

    def get_text(self, key: str) -> Optional[str]:
        path = self.root / key
        return path.read_text() if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".partial"))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


class S3Storage:
    def __init__(self, bucket: str, prefix: str, endpoint_url: Optional[str] = None, timeout_s: Optional[float] = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        patience = ({"retries": {"max_attempts": 8, "mode": "standard"}} if timeout_s is None else
                    {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": timeout_s,
                     "read_timeout": timeout_s})
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url, config=Config(**patience))
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, self._key(key), Config=self.transfer)

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(local), Config=self.transfer)

    def put_text(self, key: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=text.encode())

    def get_text(self, key: str) -> Optional[str]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read().decode()
        except self.client.exceptions.NoSuchKey:
            return None

    def list(self, prefix: str) -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self._key(prefix)):
            keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": self._key(k)} for k in self.list(prefix)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000]})
