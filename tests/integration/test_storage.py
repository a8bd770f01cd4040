"""Storage and checkpoints against a local directory and a real HTTP S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import os

import pytest

from ponder.storage.checkpoints import LATEST, CheckpointError, CheckpointStore
from ponder.storage.backends import open_storage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ckpt")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_storage(f"s3://ckpt/{request.node.name}", endpoint_url=endpoint)


def _checkpoint_dir(tmp_path, step: int, size: int = 1000):
    d = tmp_path / f"local_{step}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(bytes([step % 256]) * size)
    (d / "state.json").write_text(f'{{"step": {step}}}')
    return d


def test_storage_round_trip(storage, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello")
    storage.put_file(src, "x/a.txt")
    storage.put_text("x/b.txt", "world")
    assert storage.list("x/") == ["x/a.txt", "x/b.txt"]
    storage.get_file("x/a.txt", tmp_path / "back" / "a.txt")
    assert (tmp_path / "back" / "a.txt").read_text() == "hello"
    assert storage.get_text("x/b.txt") == "world" and storage.get_text("x/none") is None
    storage.delete_prefix("x/")
    assert storage.list("x/") == []


def test_large_files_go_up_in_parts(s3_endpoint, tmp_path):
    from boto3.s3.transfer import TransferConfig

    storage = open_storage("s3://ckpt/multipart", endpoint_url=s3_endpoint)
    storage.transfer = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)  # S3's smallest part
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    storage.put_file(big, "big.bin")
    head = storage.client.head_object(Bucket="ckpt", Key="multipart/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    storage.get_file("big.bin", tmp_path / "big.back")
    assert (tmp_path / "big.back").read_bytes() == big.read_bytes()


def test_checkpoints_save_load_and_keep_last(storage, tmp_path):
    store = CheckpointStore(storage, keep_last=2)
    assert store.latest() is None
    for step in (10, 20, 30):
        store.save(step, _checkpoint_dir(tmp_path, step), {"run_id": "r1"})
    assert store.complete() == ["step_00000020", "step_00000030"]  # the oldest went
    assert store.latest() == "step_00000030"
    manifest = store.load("step_00000030", tmp_path / "restored")
    assert manifest["step"] == 30 and manifest["meta"] == {"run_id": "r1"}
    assert (tmp_path / "restored" / "model" / "weights.bin").read_bytes() == bytes([30]) * 1000


def test_a_checkpoint_from_several_writers(storage, tmp_path):
    """Learner ranks upload their own parts from their own nodes; the manifest, written once, lists every part. Two
    writers of one file would make the checkpoint ambiguous: refused, and the checkpoint never completes."""
    store = CheckpointStore(storage)
    store.begin(40)
    ranks = []
    for rank in (0, 1):
        part = tmp_path / f"rank{rank}"
        (part / "rng").mkdir(parents=True)
        (part / "rng" / f"rank_{rank}.pt").write_bytes(bytes([rank]) * 10)
        ranks.append(store.upload(40, part))
    assert store.commit(40, ranks, {}) == "step_00000040"
    store.load("step_00000040", tmp_path / "back")
    assert sorted(p.name for p in (tmp_path / "back" / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    store.begin(50)
    with pytest.raises(CheckpointError, match="two writers uploaded"):
        store.commit(50, [store.upload(50, tmp_path / "rank0")] * 2, {})
    assert store.complete() == ["step_00000040"]


def _break_uploads_of(storage, name: str, times: int) -> dict:
    """Make the next `times` uploads of files called `name` fail. S3: in botocore, as the connection dropping
    (retried by boto3 as a real network error would be); local: in the copy."""
    failures = {"left": times, "seen": 0}
    if hasattr(storage, "client"):
        from botocore.exceptions import EndpointConnectionError

        def before_send(request, **_):
            if request.url.split("?")[0].endswith(name) and failures["left"]:
                failures["left"] -= 1
                failures["seen"] += 1
                raise EndpointConnectionError(endpoint_url=request.url)

        storage.client.meta.events.register("before-send.s3.PutObject", before_send)
    else:
        real_put = storage.put_file

        def put_file(local, key):
            if key.endswith(name) and failures["left"]:
                failures["left"] -= 1
                failures["seen"] += 1
                raise ConnectionError("injected: connection lost mid-upload")
            real_put(local, key)

        storage.put_file = put_file
    return failures


def test_an_upload_that_dies_halfway_is_never_latest(storage, tmp_path):
    store = CheckpointStore(storage, keep_last=3)
    store.save(10, _checkpoint_dir(tmp_path, 10), {})
    failures = _break_uploads_of(storage, "state.json", times=100)  # the model file goes up, then the link is down
    with pytest.raises(Exception, match="connect|connection"):
        store.save(20, _checkpoint_dir(tmp_path, 20), {})
    assert failures["seen"] >= 1
    assert any(k.startswith("step_00000020/model/") for k in storage.list(""))  # its first file did arrive
    assert store.complete() == ["step_00000010"] and store.latest() == "step_00000010"
    fresh = CheckpointStore(open_storage(storage.url, **_endpoint(storage)))  # what a restarted job sees
    assert fresh.latest() == "step_00000010"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        fresh.load("step_00000020", tmp_path / "nope")
    fresh.save(30, _checkpoint_dir(tmp_path, 30), {})
    assert fresh.latest() == "step_00000030"
    assert not any(k.startswith("step_00000020/") for k in storage.list(""))  # the dead upload is cleaned away


def test_a_transient_s3_error_is_retried(s3_endpoint, tmp_path):
    storage = open_storage("s3://ckpt/transient", endpoint_url=s3_endpoint)
    failures = _break_uploads_of(storage, "state.json", times=2)
    CheckpointStore(storage).save(10, _checkpoint_dir(tmp_path, 10), {})
    assert failures["seen"] == 2 and CheckpointStore(storage).latest() == "step_00000010"


def test_latest_never_names_an_incomplete_checkpoint(storage, tmp_path):
    store = CheckpointStore(storage)
    store.save(10, _checkpoint_dir(tmp_path, 10), {})
    storage.put_text(LATEST, "step_00000099")  # e.g. written by a buggy or foreign writer
    assert store.latest() == "step_00000010"


def test_a_corrupted_file_is_refused(storage, tmp_path):
    store = CheckpointStore(storage)
    store.save(10, _checkpoint_dir(tmp_path, 10), {})
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 1000)
    storage.put_file(bad, "step_00000010/model/weights.bin")
    with pytest.raises(CheckpointError, match="corrupted"):
        store.load("step_00000010", tmp_path / "restored")


def _endpoint(storage) -> dict:
    return {"endpoint_url": storage.client.meta.endpoint_url} if hasattr(storage, "client") else {}


def test_bad_urls_say_what_to_use():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_storage("gs://bucket/x")
    with pytest.raises(ValueError, match="no bucket"):
        open_storage("s3:///x")


@pytest.mark.parametrize("name", ["flywheel.jsonl", "flywheel.parquet", "flywheel_hf"])
def test_export_to_s3_and_reload_preserves_every_field(s3_endpoint, monkeypatch, name):
    """`ponder export` to s3:// (a file, or a Hugging Face directory's objects) and `data.train=s3://...` read back."""
    from ponder.data.datasets import load_problems
    from ponder.data.traces import export_rows, write_dataset
    from ponder.platform.config import TaskConfig

    trace = {"prompt": "12+30", "answer": "42", "problem_reward": "math", "metadata": {"tests": ["assert 1"]},
             "response": "2+0=2 </think> \\boxed{42}", "response_tokens": 24, "finish_reason": "stop", "reward": 1.1,
             "terms": {"math": 1.0, "format": 1.0}, "correct": True, "masked": False, "critic": [[3, 0.25]],
             "policy_version": 7, "turns": 1, "step": 7, "group_id": 3, "sample_index": 1, "pass_rate": 0.5}
    rows = export_rows([trace], "run9", {"dataset": "embedded:arithmetic", "dataset_sha256": "0f" * 32})
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    uri = write_dataset(rows, f"s3://ckpt/exports/{name}")
    [problem] = load_problems(uri, "train", TaskConfig())
    assert (problem.prompt, problem.answer, problem.reward, problem.metadata) == \
        (rows[0]["prompt"], rows[0]["answer"], rows[0]["reward"], rows[0]["metadata"])
    assert problem.metadata["trace"]["critic"] == [[3, 0.25]] and problem.metadata["completion"] == trace["response"]
