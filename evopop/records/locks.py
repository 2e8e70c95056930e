"""One driver per run: an exclusive lock file, RUN_DIR/.lock, on every storage.

The lock holds who took it (host, pid, time) and a random token. Three rules, on every storage:

- taking it is one atomic create-if-absent, so two drivers racing for a run never both win;
- a lock whose driver died on this host (its pid is gone) is taken over, atomically too: only if it
  is still the very lock that was found dead, so two drivers taking over the same stale lock never
  both win; a lock from another host cannot be checked and is refused, naming the file to remove;
- a driver removes the lock only if it is still its own (its token), never one another took over.

How "atomic" is done depends on the storage:

- local and shared filesystems: ``O_CREAT | O_EXCL``; a take-over happens under a second exclusive
  file (``.lock.takeover``), which re-reads the lock before replacing it;
- S3 and S3-compatible stores: conditional writes (``If-None-Match: *`` to create, ``If-Match: <etag>``
  to take over and to delete), through boto3 (``pip install 'evopop[s3]'``);
- other object stores (``gs://``, ``hdfs://``): create if absent, then read back after a short pause and
  check the token (a best-effort lease: two drivers starting within that pause could both proceed).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

from .storage import Storage

TAKEOVER_GUARD_STALE_S = 60.0  # a take-over guard older than this was left by a driver that died in it
LEASE_SETTLE_S = 1.0  # best-effort stores: how long to wait before reading a fresh lock back


class RunLockedError(RuntimeError):
    """Another driver holds the run."""


def holder_text(holder: dict, where: str) -> str:
    return (
        f"is being driven by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}; "
        f"if that driver is gone, remove {where}"
    )


def new_claim() -> dict:
    """What a driver writes into the lock: who it is, and a token no other driver has."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(),
        "token": uuid.uuid4().hex,
    }


def is_stale(holder: dict) -> bool:
    """A lock left by a driver that died on this host; one from another host cannot be checked."""
    return holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid"))


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def lock_for(storage: Storage, uri: str):
    """The lock implementation for the storage the run lives on."""
    if storage.is_local:
        return LocalLock(storage.path(".lock"), uri)
    if urlsplit(uri).scheme == "s3":
        return S3Lock(uri)
    return LeaseLock(storage, uri)


class LocalLock:
    def __init__(self, path: str, uri: str):
        self.path, self.uri = path, uri
        self.claim: dict | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        claim = new_claim()
        if self._create(self.path, claim):
            self.claim = claim
            return
        holder = _read_json_file(self.path)
        if not is_stale(holder):
            raise RunLockedError(f"{self.uri} {holder_text(holder, self.path)}")
        self._take_over(holder, claim)
        self.claim = claim

    def _take_over(self, stale: dict, claim: dict) -> None:
        guard = self.path + ".takeover"
        if os.path.exists(guard) and time.time() - os.path.getmtime(guard) > TAKEOVER_GUARD_STALE_S:
            _unlink(guard)
        if not self._create(guard, claim):
            raise RunLockedError(f"{self.uri}: another driver is taking over its stale lock {self.path}")
        try:
            if _read_json_file(self.path) != stale:  # someone was faster: it is theirs now
                raise RunLockedError(f"{self.uri}: another driver took over its stale lock {self.path}")
            tmp = f"{self.path}.{claim['token']}"
            with open(tmp, "w") as f:
                json.dump(claim, f)
            os.replace(tmp, self.path)
        finally:
            _unlink(guard)

    @staticmethod
    def _create(path: str, claim: dict) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(claim, f)
        return True

    def release(self) -> None:
        if self.claim and _read_json_file(self.path).get("token") == self.claim["token"]:
            _unlink(self.path)
        self.claim = None


class S3Lock:
    """Conditional writes: S3 (since 2024) and S3-compatible stores that implement them."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client, self.bucket, self.key = _s3_client(uri)
        self.etag: str | None = None
        self.token: str | None = None

    def acquire(self) -> None:
        claim = new_claim()
        body = json.dumps(claim).encode()
        try:
            self.etag = self._put(body, IfNoneMatch="*")
        except self._precondition_failed:
            holder, etag = self._read()
            if holder is None:  # released in between: try once more, as a fresh create
                self.etag = self._put(body, IfNoneMatch="*")
            elif not is_stale(holder):
                raise RunLockedError(f"{self.uri} {holder_text(holder, self._where)}") from None
            else:
                try:
                    self.etag = self._put(body, IfMatch=etag)  # only if it is still the stale lock
                except self._precondition_failed:
                    raise RunLockedError(f"{self.uri}: another driver took over its stale lock") from None
        self.token = claim["token"]

    def release(self) -> None:
        if self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except Exception:  # taken over (not ours any more) or already gone: leave it
            pass
        self.etag = self.token = None

    @property
    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def _precondition_failed(self):
        return self.client.exceptions.ClientError

    def _put(self, body: bytes, **condition) -> str:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except self.client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            raise OSError(f"cannot write the run lock {self._where}: {exc}") from None

    def _read(self) -> tuple[dict | None, str | None]:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None, None
        return _parse(got["Body"].read()), got["ETag"]


class LeaseLock:
    """Best effort where no conditional write is available: create if absent, then read back."""

    def __init__(self, storage: Storage, uri: str):
        self.storage, self.uri = storage, uri
        self.token: str | None = None

    def acquire(self) -> None:
        where = self.storage.path(".lock")
        if self.storage.exists(".lock"):
            holder = _parse(self.storage.read_bytes(".lock"))
            if not is_stale(holder):
                raise RunLockedError(f"{self.uri} {holder_text(holder, where)}")
        claim = new_claim()
        self.storage.write_bytes(".lock", json.dumps(claim).encode())
        time.sleep(LEASE_SETTLE_S)  # a driver that wrote at the same moment shows up now
        if _parse(self.storage.read_bytes(".lock")).get("token") != claim["token"]:
            raise RunLockedError(f"{self.uri}: another driver took the run at the same moment")
        self.token = claim["token"]

    def release(self) -> None:
        if self.token and self.storage.exists(".lock"):
            if _parse(self.storage.read_bytes(".lock")).get("token") == self.token:
                self.storage.delete(".lock")
        self.token = None


def _s3_client(uri: str):
    """A boto3 client for the bucket of ``uri``, configured as pyarrow reads the same URI."""
    try:
        import boto3
    except ImportError:
        raise RunLockedError(
            f"{uri}: the run lock on S3 needs boto3 (pip install 'evopop[s3]'), which is not installed"
        ) from None
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    credentials = {}
    if parts.username:  # s3://KEY:SECRET@bucket/..., as pyarrow reads it
        credentials = {
            "aws_access_key_id": unquote(parts.username),
            "aws_secret_access_key": unquote(parts.password or ""),
        }
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region"), **credentials)
    key = "/".join(p for p in (parts.path.strip("/"), ".lock") if p)
    return client, parts.hostname, key


def _parse(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_json_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return _parse(f.read())
    except OSError:
        return {}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
