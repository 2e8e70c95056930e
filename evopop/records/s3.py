"""S3 objects through boto3, where it takes fewer requests than pyarrow's filesystem.

pyarrow.fs reads, lists and writes every store evopop supports, S3 included. On S3 it is generous
with requests, each a round trip and a line on the bill (measured on moto's server, pyarrow 26):

- a write is a multipart upload however small the file: 3 requests (create, one part, complete);
  ``put_object`` is 1;
- a read is a HEAD for the size, then a GET: 2; ``get_object`` is 1;
- a delete is a HEAD, the DELETE, and a PUT of a directory marker so that the folder stays: 3;
  ``delete_objects`` removes up to 1,000 keys in 1.

A run on S3 writes several small files per offspring and folds thousands of parts a generation
(`evopop.records.consolidation`): `benchmarks/bench_population.py` counts the difference. So where
boto3 is installed (``pip install 'evopop[s3]'``: the run lock on S3 needs it anyway), `Storage`
writes, reads and deletes S3 objects through it, configured from the same URI as pyarrow, and keeps
pyarrow for listing and for Parquet datasets. Without boto3 everything goes through pyarrow.

Errors leave as the `OSError` family, as pyarrow's do (a missing object is a `FileNotFoundError`):
callers tell the storage's failures from others by that.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

DELETE_BATCH = 1000  # keys per DeleteObjects request: S3's limit
MULTIPART_ABOVE = 64 * 2**20  # bytes: larger uploads go in parts (boto3's managed transfer), smaller in one PUT


def boto3_installed() -> bool:
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return True


def client_for(uri: str):
    """A boto3 S3 client configured as pyarrow reads ``uri``: credentials in the URI
    (``s3://KEY:SECRET@bucket/...``) or the usual AWS chain, ``endpoint_override``, ``scheme`` and
    ``region`` from its query (else ``AWS_ENDPOINT_URL``); ImportError without boto3."""
    import boto3
    from botocore.config import Config

    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    credentials = {}
    if parts.username:
        credentials = {
            "aws_access_key_id": unquote(parts.username),
            "aws_secret_access_key": unquote(parts.password or ""),
        }
    # bounded: a store that went away fails the run with a message in seconds, not minutes of retries
    config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region"), config=config, **credentials)


class S3Objects:
    """Put, get and delete objects named as pyarrow names them (``bucket/key``)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = client_for(uri)
        self._one_by_one = False  # set once the store refused a batch delete

    def put(self, path: str, data: bytes) -> None:
        """One object, whole or not at all (S3 uploads are atomic)."""
        bucket, key = bucket_and_key(path)
        with _as_os_error(path):
            if len(data) <= MULTIPART_ABOVE:
                self.client.put_object(Bucket=bucket, Key=key, Body=data)
            else:
                self.client.upload_fileobj(io.BytesIO(data), bucket, key)

    def get(self, path: str) -> bytes:
        bucket, key = bucket_and_key(path)
        with _as_os_error(path):
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def delete(self, paths: Iterable[str]) -> None:
        """Delete every object of ``paths`` (missing ones are no error), 1,000 a request."""
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, key = bucket_and_key(path)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start : start + DELETE_BATCH]
                if self._one_by_one:
                    self._delete_each(bucket, batch)
                    continue
                try:
                    with _as_os_error(f"{bucket}/{batch[0]}"):
                        answer = self.client.delete_objects(
                            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                        )
                except _BatchRefused:
                    self._one_by_one = True  # a store without DeleteObjects as boto3 sends it: one at a time
                    self._delete_each(bucket, batch)
                    continue
                errors = answer.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise OSError(
                        f"s3://{bucket}/{first.get('Key')}: could not delete {len(errors)} object(s): "
                        f"{first.get('Code')}: {first.get('Message')}"
                    )

    def _delete_each(self, bucket: str, keys: list[str]) -> None:
        for key in keys:
            with _as_os_error(f"{bucket}/{key}"):
                self.client.delete_object(Bucket=bucket, Key=key)


# what stores that do not take boto3's DeleteObjects answer: older MinIO, Ceph and others want the
# Content-MD5 header that boto3 >= 1.36 no longer sends; some do not implement the call at all
BATCH_REFUSED = ("MissingContentMD5", "NotImplemented", "InvalidRequest", "MethodNotAllowed")


class _BatchRefused(OSError):
    pass


def bucket_and_key(path: str) -> tuple[str, str]:
    """(bucket, key) of a path as pyarrow names S3 objects (``bucket/key``)."""
    bucket, _, key = path.partition("/")
    return bucket, key


class _as_os_error:
    """botocore's errors as the `OSError` family: NoSuchKey as FileNotFoundError, the rest as OSError."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"s3://{self.path}: no such object") from None
            if code in BATCH_REFUSED:
                raise _BatchRefused(f"s3://{self.path}: {code}") from exc
            raise OSError(f"s3://{self.path}: {code}: {error.get('Message', exc)}") from exc
        if isinstance(exc, BotoCoreError):
            raise OSError(f"s3://{self.path}: {exc}") from exc
        return False
