"""Runs on object storage, end to end, against a real S3-compatible server on loopback (moto's server).

The run directory is an ``s3://`` URI (credentials and endpoint in the URI, as a user would give
them for an S3-compatible store): a run through Ray trainers, a SIGKILLed driver and its resume,
``show``, the report, an export, and the records read from the bucket with pandas and DuckDB. The
run lock is tested on S3 and on a local disk with drivers racing for it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from evopop.cli import main  # noqa: E402
from evopop.config import load_config  # noqa: E402
from evopop.records.locks import RunLockedError  # noqa: E402
from evopop.records.run import RunRecords  # noqa: E402
from evopop.records.storage import filesystem_of, join  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
BUCKET = "evopop-test"
SMALL = ["evolution.generations=3", "evolution.offspring=2", "train.epochs=1", "diversity.enabled=false"]


@pytest.fixture(scope="module")
def moto():
    """A moto S3 server on 127.0.0.1."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(moto):
    """(base URI of the bucket, boto3 client) of the moto S3 server on 127.0.0.1."""
    host, port = moto.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    return f"s3://testing:testing@{BUCKET}?endpoint_override={host}:{port}&scheme=http&region=us-east-1", client


def _keys(client, prefix: str, bucket: str = BUCKET) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.mark.slow
def test_a_run_on_s3_through_ray_trainers_is_read_back_by_every_reader(ray_cluster, s3, tmp_path, capsys):
    base, client = s3
    run_dir = join(base, "runs", "ray")
    assert main(["run", TINY, *SMALL, "--run-dir", run_dir]) == 0
    assert not os.path.exists("s3:")  # nothing landed on the local disk under a folder named after the scheme
    keys = _keys(client, "runs/ray/")
    assert "runs/ray/config.yaml" in keys and "runs/ray/.lock" not in keys
    checkpoints = [k for k in keys if k.startswith("runs/ray/checkpoints/") and k.endswith(".pt")]
    assert len(checkpoints) == 5, checkpoints  # written by the trainers

    # pandas and DuckDB read the population straight from the bucket
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    fs, path = filesystem_of(join(run_dir, "population"))
    frame = pd.read_parquet(path, filesystem=fs)
    assert len(frame) == 5 and frame["individual_id"].is_unique
    population = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")  # noqa: F841
    rows = duckdb.sql("select count(*), max(generation) from population").fetchall()
    assert rows == [(5, 3)]

    # show, the report and an export, from the URI
    capsys.readouterr()
    assert main(["show", run_dir]) == 0
    assert "followed lineage" in capsys.readouterr().out
    assert main(["report", run_dir, "--no-diversity"]) == 0
    assert "runs/ray/report/index.html" in _keys(client, "runs/ray/report/")
    assert main(["export", run_dir, "g3-0", "--out", str(tmp_path / "g3-0.pt2")]) == 0
    assert json.loads((tmp_path / "g3-0.pt2.json").read_text())["individual_id"] == "g3-0"


@pytest.mark.slow
def test_a_sigkilled_driver_on_s3_is_resumed(s3):
    base, client = s3
    run_dir = join(base, "runs", "killed")
    driver = subprocess.Popen(
        [sys.executable, "-m", "evopop", "run", TINY, *SMALL, "resources.executor=local", "--run-dir", run_dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not any("generation=2" in k for k in _keys(client, "runs/killed/population/")):
        assert driver.poll() is None and time.monotonic() < deadline, "the driver never reached generation 2"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert "runs/killed/.lock" in _keys(client, "runs/killed/")  # a dead driver's lock stays behind

    assert main(["resume", run_dir]) == 0  # taken over: its driver died on this host
    records = RunRecords(run_dir)
    population = records.population()
    assert len(population) == 5 and population["individual_id"].is_unique
    assert population["status"].eq("ok").all()
    assert "runs/killed/.lock" not in _keys(client, "runs/killed/")


def test_the_s3_lock_is_exclusive_and_only_its_holder_removes_it(s3):
    base, client = s3
    first, second = RunRecords(join(base, "runs", "lock")), RunRecords(join(base, "runs", "lock"))
    with first.lock():
        with pytest.raises(RunLockedError, match=f"being driven by pid {os.getpid()}"):
            with second.lock():
                pass
    assert "runs/lock/.lock" not in _keys(client, "runs/lock/")

    # a lock this driver no longer holds (taken over) is left alone when it ends
    other = {"host": "elsewhere", "pid": 1, "since": "now", "token": "theirs"}
    with first.lock():
        client.put_object(Bucket=BUCKET, Key="runs/lock/.lock", Body=json.dumps(other).encode())
    body = client.get_object(Bucket=BUCKET, Key="runs/lock/.lock")["Body"].read()
    assert json.loads(body)["token"] == "theirs"
    with pytest.raises(RunLockedError, match="on elsewhere"):  # another host's lock cannot be checked
        with second.lock():
            pass

    # a stale lock of this host is taken over
    stale = {"host": socket.gethostname(), "pid": 999_999_999, "since": "then", "token": "dead"}
    client.put_object(Bucket=BUCKET, Key="runs/lock/.lock", Body=json.dumps(stale).encode())
    with second.lock():
        body = client.get_object(Bucket=BUCKET, Key="runs/lock/.lock")["Body"].read()
        assert json.loads(body)["pid"] == os.getpid()


def _race(run_dir: str, barrier, results) -> None:
    barrier.wait()
    try:
        with RunRecords(run_dir).lock():
            results.put(os.getpid())
            time.sleep(1.0)  # hold it while the others try
    except RunLockedError:
        results.put(None)


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_drivers_racing_for_a_stale_lock_never_both_win(storage, s3, tmp_path):
    """Four processes take over the same dead driver's lock at the same moment: exactly one wins."""
    base, client = s3
    run_dir = str(tmp_path / "run") if storage == "local" else join(base, "runs", "race")
    stale = {"host": socket.gethostname(), "pid": 999_999_999, "since": "then", "token": "dead"}
    if storage == "local":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(json.dumps(stale))
    else:
        client.put_object(Bucket=BUCKET, Key="runs/race/.lock", Body=json.dumps(stale).encode())
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    racers = [context.Process(target=_race, args=(run_dir, barrier, results)) for _ in range(4)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=30)
    winners = [pid for pid in outcomes if pid is not None]
    assert len(winners) == 1, outcomes


def test_local_run_directories_are_made_absolute_before_trainers_see_them(tmp_path, monkeypatch):
    from evopop.api import evolution

    monkeypatch.chdir(tmp_path)
    config = load_config(TINY, [*SMALL, "resources.executor=local"])
    run = evolution(config, "relative/run")
    assert run.records.uri == str(tmp_path / "relative" / "run")


# -- the lock as a lease, and the fence ---------------------------------------------------------------
def _lock_path(storage: str, base: str, tmp_path, name: str) -> tuple[str, callable, callable]:
    """(run directory, write(claim), read() -> claim) of a run's lock on local disk or S3."""
    if storage == "local":
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        lock = run_dir / ".lock"
        return str(run_dir), lambda c: lock.write_text(json.dumps(c)), lambda: json.loads(lock.read_text())
    client = boto3.client("s3", endpoint_url=_endpoint(base), aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    key = f"runs/{name}/.lock"
    return (
        join(base, "runs", name),
        lambda c: client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(c).encode()),
        lambda: json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()),
    )


def _endpoint(base: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    query = {k: v[-1] for k, v in parse_qs(urlsplit(base).query).items()}
    return f"{query['scheme']}://{query['endpoint_override']}"


def _other_host(lease_s: float, renewed_ago: float, token: str = "theirs") -> dict:
    """A lock left by a driver on another host (a head that died: its pod is gone, a new one has another name)."""
    since = time.time() - renewed_ago
    return {"host": "old-head-7f9c", "pid": 4242, "since": "then", "token": token, "lease_s": lease_s, "renewed": since}


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_dead_heads_lock_is_taken_over_once_its_lease_lapses(storage, s3, tmp_path, capsys):
    from evopop.records.locks import TokenFence, boot_clock, lease_left
    from evopop.records.storage import Storage

    run_dir, write, read = _lock_path(storage, s3[0], tmp_path, f"lapse-{storage}")
    write(_other_host(lease_s=2.0, renewed_ago=0.5))
    started = time.monotonic()
    with RunRecords(run_dir).lock(lease_s=2.0) as lease:
        waited = time.monotonic() - started
        assert read()["token"] == lease.token and read()["host"] == socket.gethostname()
        assert lease_left(read()) > 1.0 and lease.valid_until - boot_clock() > 1.0
        TokenFence(Storage(run_dir), lease.token).check()  # its trainers may write
    assert 1.0 <= waited < 6.0, waited  # the lease's remaining 1.5 s, not forever, not at once
    # taken over after a wait: the lease it holds runs from its write, not from before the wait
    assert re.search(
        r"held by pid 4242 on old-head-7f9c; waiting \d+ s for its lease to lapse", capsys.readouterr().out
    )

    # a lease renewed while it is waited out: its driver is alive, and the run is refused
    write(_other_host(lease_s=2.0, renewed_ago=0.0))
    renewer = __import__("threading").Timer(1.0, lambda: write(_other_host(lease_s=2.0, renewed_ago=0.0)))
    renewer.start()
    with pytest.raises(RunLockedError, match="on old-head-7f9c .*lease was renewed"):
        with RunRecords(run_dir).lock(lease_s=5.0):
            pass
    renewer.join()


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_the_lease_is_renewed_and_fences_every_writer_once_taken_over(storage, s3, tmp_path):
    from evopop.records.locks import RunFencedError

    run_dir, write, read = _lock_path(storage, s3[0], tmp_path, f"fence-{storage}")
    records = RunRecords(run_dir)
    with records.lock(lease_s=2.0) as lease:
        first = read()["renewed"]
        time.sleep(1.3)
        assert read()["renewed"] > first, "renewed every quarter of the lease"
        trainer = RunRecords(run_dir, fence_token=lease.token)
        trainer.storage.write_bytes("checkpoints/a.pt", b"ok")  # its driver holds the run: written

        write(_other_host(lease_s=60.0, renewed_ago=0.0, token="new-driver"))  # another driver took it over
        with pytest.raises(RunFencedError, match="no longer holds the run .*old-head-7f9c"):
            trainer.storage.write_bytes("checkpoints/b.pt", b"late")
        deadline = time.monotonic() + 5
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(RunFencedError, match="another driver took its lock over"):
            records.storage.write_bytes("population/x.parquet", b"late")
    assert not records.storage.exists("checkpoints/b.pt") and not records.storage.exists("population/x.parquet")
    assert read()["token"] == "new-driver", "the driver that lost the run leaves the new holder's lock alone"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_store_that_goes_away_mid_run_stops_it_clearly_and_it_resumes_without_loss_once_back(tmp_path):
    """The S3 server stops mid-generation 2: the driver stops with one plain message (no hang, no
    traceback), and once the server is back on the same address, `evopop resume` finishes the run with
    every individual recorded once."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket="vanishing")
    run_dir = f"s3://testing:testing@vanishing/runs/v?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    slow = ["task.name=user_tasks:flaky", "task.args={step_sleep: 0.05, train_size: 256, val_size: 64}"]
    command = [sys.executable, "-m", "evopop", "run", TINY, *SMALL, *slow, "resources.executor=local"]
    driver = subprocess.Popen([*command, "--run-dir", run_dir], cwd=ROOT / "tests", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any("generation=2" in k for k in _keys(client, "runs/v/population/", "vanishing")):
            assert driver.poll() is None and time.monotonic() < deadline, "the driver never reached generation 2"
            time.sleep(0.2)
        server.stop()  # the store is gone (its objects stay in this process's memory, as a real store's would)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert "the run's storage failed" in err and "evopop resume" in err, err[-2000:]

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # back, on the same address
    try:
        lock = json.loads(client.get_object(Bucket="vanishing", Key="runs/v/.lock")["Body"].read())
        assert lock["pid"] == driver.pid  # its driver could not remove it: dead on this host, it is taken over
        resumed = subprocess.run([sys.executable, "-m", "evopop", "resume", run_dir], cwd=ROOT / "tests",
                                 capture_output=True, text=True, timeout=240)  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        population = RunRecords(run_dir).population()
        assert sorted(population["individual_id"]) == sorted(["g1-0", "g2-0", "g2-1", "g3-0", "g3-1"])
        assert population["status"].eq("ok").all()
    finally:
        server.stop()


class _Requests:
    """WSGI middleware around moto's app: the method of every request it serves."""

    def __init__(self, app):
        self.app, self.methods = app, []

    def __call__(self, environ, start_response):
        self.methods.append(environ["REQUEST_METHOD"])
        return self.app(environ, start_response)


def test_objects_on_s3_cost_one_request_a_write_and_a_read_and_deletes_go_by_the_batch(moto, s3, monkeypatch):
    """Through boto3 (`evopop.records.s3`): a write is 1 PUT (pyarrow's multipart upload is 3 requests),
    a read 1 GET (pyarrow's is 2), and deletes go by the batch (1,000 a request on S3, 10 here; pyarrow's
    are 3 requests each); a missing object reads as FileNotFoundError and a fold leaves one file."""
    import pyarrow as pa

    from evopop.records import s3 as s3_objects
    from evopop.records.consolidation import CONSOLIDATED, consolidate, parquet_bytes
    from evopop.records.storage import Storage

    monkeypatch.setattr(s3_objects, "DELETE_BATCH", 10)
    base, client = s3
    server = moto._server  # moto's werkzeug server (a private attribute)
    counter = _Requests(server.app)
    server.app = counter
    try:
        storage = Storage(join(base, "requests"))
        storage.write_bytes("a/x.bin", b"x" * 1000)
        storage.read_bytes("a/x.bin")
        assert counter.methods == ["PUT", "GET"]
        with pytest.raises(FileNotFoundError):
            storage.read_bytes("a/missing.bin")
        names = [f"d/k{i}.bin" for i in range(15)]
        for name in names:
            storage.write_bytes(name, b"")
        counter.methods.clear()
        storage.delete_many(names + ["d/never-written.bin"])
        assert counter.methods == ["POST", "POST"]  # DeleteObjects, 10 keys each
        assert _keys(client, "requests/d/") == []
        for i in range(3):
            storage.write_bytes(f"g/part-i{i}.parquet", parquet_bytes(pa.table({"individual_id": [f"i{i}"]})))
        counter.methods.clear()
        assert consolidate(storage, "g", ["individual_id"]) == 3
        assert counter.methods.count("POST") == 1 and counter.methods.count("PUT") == 1  # one delete, one fold
        assert _keys(client, "requests/g/") == [f"requests/g/{CONSOLIDATED}"]
    finally:
        server.app = counter.app


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_driver_whose_renewals_hang_stops_writing_once_its_lease_runs_out(storage, s3, tmp_path, monkeypatch):
    """The renewing thread is stuck (a store that hangs, a frozen process): the driver's own check reads
    the clock, and its first write after the lease (less a margin) is refused, before another driver
    could take the run over; its trainers refuse a lease that lapsed by their clock too."""
    from evopop.records.locks import RunFencedError, TokenFence
    from evopop.records.storage import Storage

    run_dir, write, read = _lock_path(storage, s3[0], tmp_path, f"hang-{storage}")
    records = RunRecords(run_dir)
    stuck = __import__("threading").Event()
    with records.lock(lease_s=2.0) as lease:
        monkeypatch.setattr(lease.lock, "renew", lambda: stuck.wait(30) or True)
        records.storage.write_bytes("population/a.parquet", b"ok")
        time.sleep(2.3)
        assert lease.lost is None, "the renewing thread has not noticed: it hangs"
        with pytest.raises(RunFencedError, match="lease ran out"):
            records.storage.write_bytes("population/b.parquet", b"late")
        trainer = TokenFence(Storage(run_dir), lease.token)
        with pytest.raises(RunFencedError, match="lapsed"):
            trainer.check()
        stuck.set()
    assert not records.storage.exists("population/b.parquet")


def test_a_driver_in_another_pid_namespace_of_the_same_host_is_not_judged_by_its_pid(tmp_path):
    """Containers sharing a host name (``--network host``) do not share pids: a lock from another pid
    namespace is a live lease to wait out, not a dead local pid to take over at once."""
    from evopop.records.locks import PID_NAMESPACE, is_stale, same_pid_space

    here = {"host": socket.gethostname(), "pid": 999_999_999, "token": "t", "lease_s": 60.0, "renewed": time.time()}
    assert same_pid_space(here) and is_stale(here), "an old-style lock (no namespace): judged by its pid"
    if PID_NAMESPACE is None:
        pytest.skip("no /proc/self/ns/pid here")
    other = {**here, "pidns": "pid:[4026531836-other]"}
    assert not same_pid_space(other) and not is_stale(other), "another namespace: its lease decides"
    assert is_stale({**other, "renewed": time.time() - 61}), "and once that lapses, it is stale"


def test_the_s3_lock_is_where_pyarrow_and_the_trainers_look_for_it_and_survives_its_own_late_answer(s3):
    """A run directory whose path needs decoding (a space): the lock's key is pyarrow's; and a renewal whose
    request was retried after it had landed (a 412 against its own write) keeps the lock."""
    from evopop.records.locks import TokenFence
    from evopop.records.storage import Storage

    base, client = s3
    run_dir = join(base, "runs", "my%20run")
    records = RunRecords(run_dir)
    with records.lock(lease_s=30.0) as lease:
        assert "runs/my run/.lock" in _keys(client, "runs/")
        TokenFence(Storage(run_dir), lease.token).check()  # the trainers find it
        lock = lease.lock
        real_put = lock._put

        def landed_then_refused(body, **condition):
            real_put(body, **condition)  # it lands; the answer is lost, and the retry is refused
            from evopop.records.locks import _PreconditionFailed

            raise _PreconditionFailed("PreconditionFailed")

        lock._put = landed_then_refused
        assert lock.renew(), "its own renewal: still its lock"
        lock._put = real_put
        assert (
            lock.renew()
            and json.loads(client.get_object(Bucket=BUCKET, Key="runs/my run/.lock")["Body"].read())["token"]
            == lease.token
        )


def test_deletes_fall_back_to_one_at_a_time_on_a_store_that_refuses_the_batch(s3, monkeypatch):
    """Older MinIO and Ceph want a Content-MD5 header on DeleteObjects that boto3 no longer sends."""
    from botocore.exceptions import ClientError

    from evopop.records.storage import Storage

    base, client = s3
    storage = Storage(join(base, "refusing"))
    for i in range(3):
        storage.write_bytes(f"p/{i}.bin", b"x")
    objects = storage._objects
    refused = ClientError(
        {"Error": {"Code": "MissingContentMD5", "Message": "Missing required header"}}, "DeleteObjects"
    )
    monkeypatch.setattr(objects.client, "delete_objects", lambda **kwargs: (_ for _ in ()).throw(refused))
    storage.delete_many([f"p/{i}.bin" for i in range(3)])
    assert _keys(client, "refusing/") == []


def test_a_trainers_fence_check_stands_for_an_individuals_writes_and_no_longer(tmp_path):
    """One read of the lock serves the writes of the next second (an individual's files, back to back)
    while the lease it saw has longer to run; a take-over is seen by the first check after that."""
    from evopop.records.locks import RunFencedError, TokenFence
    from evopop.records.storage import Storage

    run_dir, write, _ = _lock_path("local", "", tmp_path, "reuse")
    with RunRecords(run_dir).lock(lease_s=30.0) as lease:
        storage = Storage(run_dir)
        reads = []
        real = storage.read_bytes
        storage.read_bytes = lambda rel: reads.append(rel) or real(rel)
        fence = TokenFence(storage, lease.token, reuse_s=0.5)
        fence.check()
        fence.check()
        assert reads == [".lock"], "the second check within reuse_s reads nothing"
        write(_other_host(lease_s=60.0, renewed_ago=0.0, token="new-driver"))
        time.sleep(0.6)
        with pytest.raises(RunFencedError, match="no longer holds the run"):
            fence.check()
        write({**json.loads(Path(run_dir, ".lock").read_text()), "token": lease.token})  # back, for a clean release


def test_a_new_run_directory_is_written_under_the_lock(tmp_path):
    """A driver holds the run: another `evopop run` with another config on the same (new) directory is refused
    before it writes anything, so the run's config.yaml is never the loser's."""
    from evopop.api import evolution

    run_dir = str(tmp_path / "contested")
    first = load_config(TINY, ["resources.executor=local"])
    with RunRecords(run_dir).lock(lease_s=30.0):
        with pytest.raises(RunLockedError):
            evolution(load_config(TINY, ["resources.executor=local", "evolution.offspring=5"]), run_dir)
    assert not RunRecords(run_dir).exists(), "the refused driver wrote no config"
    evolution(first, run_dir)
    assert load_config(__import__("yaml").safe_load(RunRecords(run_dir).read_config())).evolution.offspring == (
        first.evolution.offspring
    )
