"""One driver per run: an exclusive lock file, RUN_DIR/.lock, on every storage, held as a lease.

The lock holds who took it (host, pid, time), a random token, and when it was last renewed: the
driver renews it every quarter of its lease (``storage.lock_lease_s``, 60 s by default) from a
background thread (`LeaseKeeper`). Four rules, on every storage:

- taking it is one atomic create-if-absent, so two drivers racing for a run never both win;
- a lock is stale when its driver died on this host (its pid is gone) or when its lease ran out
  (not renewed for ``lease_s``: its driver, on any host, is gone or cut off). A stale lock is taken
  over, atomically too: only if it is still the very lock that was found stale, so two drivers taking
  over the same stale lock never both win. A live lease from another host is waited out once (at
  most one lease: a driver whose head died resumes from a new head without a hand-deleted lock); if
  it is renewed meanwhile, its driver lives and the run is refused;
- a driver removes the lock only if it is still its own (its token), never one another took over;
- fencing: the token is the run's fence. The driver stops writing once a renewal finds the lock is
  not its own any more, and its trainers check the lock still holds their driver's token before each
  file they write (`TokenFence`), so trainers that outlive a dead driver (Ray takes about a minute to
  reap them) write nothing into the run a new driver resumed.

Clocks: a lease compares the holder's wall clock with the reader's; hosts kept by NTP agree to well
within a lease.

How "atomic" is done depends on the storage:

- local and shared filesystems: ``O_CREAT | O_EXCL``; a take-over happens under a second exclusive
  file (``.lock.takeover``), which re-reads the lock before replacing it;
- S3 and S3-compatible stores: conditional writes (``If-None-Match: *`` to create, ``If-Match: <etag>``
  to take over and to delete), through boto3 (``pip install 'evopop[s3]'``);
- other object stores (``gs://``, ``hdfs://``): create if absent, then read back after a short pause and
  check the token (a best-effort lease: two drivers starting within that pause could both proceed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit

from .s3 import bucket_and_key, client_for
from .storage import Storage

TAKEOVER_GUARD_STALE_S = 60.0  # a take-over guard older than this was left by a driver that died in it
LEASE_SETTLE_S = 1.0  # best-effort stores: how long to wait before reading a fresh lock back
DEFAULT_LEASE_S = 60.0


class RunLockedError(RuntimeError):
    """Another driver holds the run."""


class RunFencedError(RuntimeError):
    """This process's driver no longer holds the run: another driver took it over."""


def holder_text(holder: dict, where: str) -> str:
    lease = holder.get("lease_s")
    expiry = ""
    if isinstance(lease, (int, float)) and isinstance(holder.get("renewed"), (int, float)):
        age = time.time() - holder["renewed"]
        expiry = f"; its lease was renewed {age:.0f} s ago and lapses {lease:g} s after a renewal"
    return (
        f"is being driven by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}{expiry}; "
        f"if that driver is gone, remove {where} (or wait for its lease to lapse)"
    )


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


# what makes a pid on "this host" the same process space as ours: containers sharing a host name
# (``--network host``) do not share pids, and a rebooted host reuses them
BOOT_ID = _read_text("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE = _pid_namespace()


def same_pid_space(holder: dict) -> bool:
    """Whether ``holder``'s pid can be looked up here: the same host name, and (where the lock says)
    the same boot and pid namespace."""
    if holder.get("host") != socket.gethostname():
        return False
    for key, ours in (("boot", BOOT_ID), ("pidns", PID_NAMESPACE)):
        theirs = holder.get(key)
        if theirs is not None and ours is not None and theirs != ours:
            return False
    return True


def new_claim(lease_s: float = DEFAULT_LEASE_S) -> dict:
    """What a driver writes into the lock: who it is, a token no other driver has, and its lease."""
    return {
        "host": socket.gethostname(),
        "boot": BOOT_ID,
        "pidns": PID_NAMESPACE,
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(),
        "token": uuid.uuid4().hex,
        "lease_s": float(lease_s),
        "renewed": time.time(),
    }


def renewed(claim: dict) -> dict:
    return {**claim, "renewed": time.time()}


class _Stamps:
    """What every lock keeps of the claim it last wrote: ``stamped_at``, the boot-time clock just before
    its ``renewed`` time was taken, from which the lease this driver holds runs (`LeaseKeeper`)."""

    stamped_at: float | None = None

    def _stamp(self, claim: dict) -> dict:
        """``claim`` renewed now, just before it is written (a claim made before a wait would land lapsed)."""
        self.stamped_at = boot_clock()
        return renewed(claim)


def lease_left(holder: dict) -> float | None:
    """Seconds until ``holder``'s lease lapses (negative: lapsed); None for a lock without a lease."""
    lease, at = holder.get("lease_s"), holder.get("renewed")
    if not isinstance(lease, (int, float)) or not isinstance(at, (int, float)):
        return None
    return at + lease - time.time()


def is_stale(holder: dict) -> bool:
    """A lock left by a driver that died on this host, or whose lease lapsed (its driver, anywhere, gone)."""
    if same_pid_space(holder) and not pid_alive(holder.get("pid")):
        return True
    left = lease_left(holder)
    return left is not None and left < 0


def stale_holder(found: tuple[dict | None, object], read, uri: str, where: str) -> tuple[dict | None, object]:
    """The lock ``found`` (holder, version), or what it became, once it may be taken over: stale, or gone
    (None). A live lease from another host is waited out once (at most one lease); RunLockedError for
    a driver alive on this host, a lock without a lease from another host, or a lease renewed meanwhile."""
    holder, _ = found
    if holder is None or is_stale(holder):
        return found
    left = lease_left(holder)
    alive_here = same_pid_space(holder) and pid_alive(holder.get("pid"))
    if alive_here or left is None:
        raise RunLockedError(f"{uri} {holder_text(holder, where)}")
    wait = min(left, float(holder["lease_s"]))  # a holder whose clock runs ahead is not waited for beyond a lease
    print(
        f"{uri}: its lock is held by pid {holder.get('pid')} on {holder.get('host')}; waiting {wait:.0f} s "
        "for its lease to lapse (it does if that driver is gone)",
        flush=True,
    )
    time.sleep(wait + 0.5)
    again = read()
    if again[0] is None or (again[0] == holder and is_stale(again[0])):
        return again
    raise RunLockedError(f"{uri} {holder_text(again[0], where)}")


def boot_clock() -> float:
    """Seconds on a clock that runs through a suspended machine (CLOCK_BOOTTIME; monotonic elsewhere):
    a lease lapses while its holder is frozen or suspended too."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


class NotRenewed(RuntimeError):
    """A renewal that did not happen this time (a take-over under way decides who holds the lock)."""


class LeaseKeeper:
    """Renews a held lock every quarter of its lease, in a daemon thread; `check` raises
    `RunFencedError` once the lock is lost (taken over by another driver) or its lease ran out: no
    renewal that started less than a lease ago (less a margin) succeeded, so another driver may take
    it now. `check` reads the clock itself, so a driver that was frozen, or whose renewals hang,
    stops at its next write, whether or not the renewing thread has noticed yet."""

    def __init__(self, lock, lease_s: float):
        self.lock, self.lease_s = lock, float(lease_s)
        self.margin = min(5.0, self.lease_s / 10)  # the time a write takes to land, and the hosts' clocks' skew
        self.lost: str | None = None
        stamped = getattr(lock, "stamped_at", None)  # when the claim it took was stamped
        self.valid_until = (stamped if stamped is not None else boot_clock()) + self.lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name="evopop-lease", daemon=True)

    @property
    def token(self) -> str | None:
        return self.lock.token

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lease_s)

    def check(self) -> None:
        if not self.lost and boot_clock() > self.valid_until - self.margin:
            self.lost = f"its lease ran out: not renewed for {self.lease_s:g} s (storage.lock_lease_s)"
        if self.lost:
            raise RunFencedError(f"{self.lock.uri}: this driver no longer holds the run ({self.lost}); it stops")

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            started = boot_clock()  # the lease runs from before the write: the lock may land at once
            try:
                if not self.lock.renew():
                    self.lost = "another driver took its lock over"
                    return
                self.valid_until = started + self.lease_s
            except Exception as exc:  # the storage unreachable: retried until the lease is spent
                if boot_clock() > self.valid_until:
                    self.lost = f"its lock could not be renewed for {self.lease_s:g} s: {type(exc).__name__}: {exc}"
                    return


class TokenFence:
    """What a trainer checks before each file it writes: the run's lock still holds its driver's token,
    under a lease that has not lapsed. One small read, reused for the writes of the next ``reuse_s`` (an
    individual's files, written back to back) while the lease it saw has longer than that to run: no
    driver may take the run over before then, but for one whose holder died on its own host, at once
    (the same window a write already has between its check and its landing). A lock that cannot be
    read (the storage down) lets the write fail on its own."""

    def __init__(self, storage: Storage, token: str, reuse_s: float = 1.0):
        self.storage, self.token, self.reuse_s = storage, token, reuse_s
        self._good_until = -math.inf  # boot_clock() until which the last check stands

    def check(self) -> None:
        if boot_clock() < self._good_until:
            return
        try:
            holder = _parse(self.storage.read_bytes(".lock"))
        except FileNotFoundError:
            holder = {}
        if holder.get("token") != self.token:
            now = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "no driver"
            raise RunFencedError(
                f"{self.storage.uri}: the driver this trainer works for no longer holds the run (now: {now}); "
                "nothing written"
            )
        left = lease_left(holder)
        if left is not None and left < 0:  # its driver is gone: another may take the run over at any moment
            raise RunFencedError(
                f"{self.storage.uri}: the lease of the driver this trainer works for lapsed {-left:.0f} s ago; "
                "nothing written"
            )
        if left is not None and left > 2 * self.reuse_s:
            self._good_until = boot_clock() + self.reuse_s


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


def lock_for(storage: Storage, uri: str, lease_s: float = DEFAULT_LEASE_S):
    """The lock implementation for the storage the run lives on."""
    if storage.is_local:
        return LocalLock(storage.path(".lock"), uri, lease_s)
    if urlsplit(uri).scheme == "s3":
        return S3Lock(storage, uri, lease_s)
    return LeaseLock(storage, uri, lease_s)


class LocalLock(_Stamps):
    def __init__(self, path: str, uri: str, lease_s: float = DEFAULT_LEASE_S):
        self.path, self.uri, self.lease_s = path, uri, lease_s
        self.claim: dict | None = None

    @property
    def token(self) -> str | None:
        return self.claim["token"] if self.claim else None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        claim = self._stamp(new_claim(self.lease_s))
        if self._create(self.path, claim):
            self.claim = claim
            return
        read = lambda: (_read_json_file(self.path) or None, None)  # noqa: E731
        holder, _ = stale_holder(read(), read, self.uri, self.path)
        claim = self._stamp(claim)  # after the wait
        self._take_over(holder or {}, claim)
        self.claim = claim

    def renew(self) -> bool:
        """Whether the lock is still this driver's; renewed if so (under the take-over guard: a
        take-over and a renewal never interleave)."""
        if self.claim is None:
            return False
        with self._guarded(self.claim, "renew") as held:
            if not held:  # a take-over is under way: the next renewal sees who won
                raise NotRenewed(f"{self.path}: another driver is taking it over")
            if _read_json_file(self.path).get("token") != self.claim["token"]:
                return False
            self.claim = renewed(self.claim)
            self._replace(self.claim)
        return True

    def _take_over(self, stale: dict, claim: dict) -> None:
        with self._guarded(claim, "take-over") as held:
            if not held:
                raise RunLockedError(f"{self.uri}: another driver is taking over its stale lock {self.path}")
            if _read_json_file(self.path) != stale:  # someone was faster: it is theirs now
                raise RunLockedError(f"{self.uri}: another driver took over its stale lock {self.path}")
            self._replace(claim)

    @contextlib.contextmanager
    def _guarded(self, claim: dict, why: str):
        """Hold the lock's guard file (``.lock.takeover``) if no one else does; yields whether held."""
        guard = self.path + ".takeover"
        # held for the milliseconds of a read and a replace: one older than a quarter of the lease was left
        # by a driver that died in it (waiting longer would fence the live holder, whose renewals it blocks)
        stale_after = min(TAKEOVER_GUARD_STALE_S, self.lease_s / 4)
        if os.path.exists(guard) and time.time() - os.path.getmtime(guard) > stale_after:
            _unlink(guard)
        if not self._create(guard, {**claim, "why": why}):
            yield False
            return
        try:
            yield True
        finally:
            _unlink(guard)

    def _replace(self, claim: dict) -> None:
        tmp = f"{self.path}.{claim['token']}"
        with open(tmp, "w") as f:
            json.dump(claim, f)
        os.replace(tmp, self.path)

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


class S3Lock(_Stamps):
    """Conditional writes: S3 (since 2024) and S3-compatible stores that implement them."""

    def __init__(self, storage: Storage, uri: str, lease_s: float = DEFAULT_LEASE_S):
        self.uri, self.lease_s = uri, lease_s
        self.client = _s3_client(uri)
        # where pyarrow, and so every reader and every trainer's fence, finds it (percent-decoded, as given)
        self.bucket, self.key = bucket_and_key(storage.path(".lock"))
        self.etag: str | None = None
        self.token: str | None = None
        self.claim: dict | None = None

    def acquire(self) -> None:
        claim = self._stamp(new_claim(self.lease_s))
        try:
            self.etag = self._put(json.dumps(claim).encode(), IfNoneMatch="*")
        except _PreconditionFailed:
            found = self._read()
            if (found[0] or {}).get("token") == claim["token"]:  # our own write, answered late (a retried request)
                self.etag = found[1]
            else:
                holder, etag = stale_holder(found, self._read, self.uri, self._where)
                claim = self._stamp(claim)  # after the wait
                body = json.dumps(claim).encode()
                try:
                    # released in between: a fresh create; else only if it is still the stale lock
                    self.etag = self._put(body, IfNoneMatch="*") if holder is None else self._put(body, IfMatch=etag)
                except _PreconditionFailed:
                    again, etag = self._read()
                    if (again or {}).get("token") != claim["token"]:
                        raise RunLockedError(f"{self.uri}: another driver took the run at the same moment") from None
                    self.etag = etag  # our own write, answered late
        self.token, self.claim = claim["token"], claim

    def renew(self) -> bool:
        """Whether the lock is still this driver's (its ETag unchanged); renewed if so."""
        if self.claim is None:
            return False
        claim = renewed(self.claim)
        try:
            self.etag = self._put(json.dumps(claim).encode(), IfMatch=self.etag)
        except _PreconditionFailed:
            holder, etag = self._read()
            if (holder or {}).get("token") != self.token:  # another driver's now
                return False
            self.etag = etag
            if holder != claim:  # ours, not renewed: a conflicting write at the same moment (409); next time
                raise NotRenewed(f"{self._where}: a concurrent conditional write; renewed at the next turn") from None
            # else our own renewal, answered late (its request retried after it had landed)
        self.claim = claim
        return True

    def release(self) -> None:
        if self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except Exception:  # taken over (not ours any more) or already gone: leave it
            pass
        self.etag = self.token = self.claim = None

    @property
    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _put(self, body: bytes, **condition) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                raise _PreconditionFailed(code) from None
            raise OSError(f"cannot write the run lock {self._where}: {exc}") from None
        except BotoCoreError as exc:  # no connection, no credentials
            raise OSError(f"cannot write the run lock {self._where}: {exc}") from None

    def _read(self) -> tuple[dict | None, str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
            return _parse(got["Body"].read()), got["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise OSError(f"cannot read the run lock {self._where}: {exc}") from None
        except BotoCoreError as exc:
            raise OSError(f"cannot read the run lock {self._where}: {exc}") from None


class _PreconditionFailed(Exception):
    """A conditional write of the S3 lock refused: the lock is not what the write assumed."""


class LeaseLock(_Stamps):
    """Best effort where no conditional write is available: create if absent, then read back."""

    def __init__(self, storage: Storage, uri: str, lease_s: float = DEFAULT_LEASE_S):
        self.storage, self.uri, self.lease_s = storage, uri, lease_s
        self.token: str | None = None
        self.claim: dict | None = None

    def _read(self) -> tuple[dict | None, None]:
        if not self.storage.exists(".lock"):
            return None, None
        return _parse(self.storage.read_bytes(".lock")), None

    def acquire(self) -> None:
        stale_holder(self._read(), self._read, self.uri, self.storage.path(".lock"))
        claim = self._stamp(new_claim(self.lease_s))
        self.storage.write_bytes(".lock", json.dumps(claim).encode())
        time.sleep(LEASE_SETTLE_S)  # a driver that wrote at the same moment shows up now
        if _parse(self.storage.read_bytes(".lock")).get("token") != claim["token"]:
            raise RunLockedError(f"{self.uri}: another driver took the run at the same moment")
        self.token, self.claim = claim["token"], claim

    def renew(self) -> bool:
        if self.claim is None or (self._read()[0] or {}).get("token") != self.token:
            return False
        self.claim = renewed(self.claim)
        self.storage.write_bytes(".lock", json.dumps(self.claim).encode())
        return True

    def release(self) -> None:
        if self.token and self.storage.exists(".lock"):
            if _parse(self.storage.read_bytes(".lock")).get("token") == self.token:
                self.storage.delete(".lock")
        self.token = self.claim = None


def _s3_client(uri: str):
    """A boto3 client for ``uri``, configured as pyarrow reads it."""
    try:
        return client_for(uri)
    except ImportError:
        raise RunLockedError(
            f"{uri}: the run lock on S3 needs boto3 (pip install 'evopop[s3]'), which is not installed"
        ) from None


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
