"""Storage: one contract for the in-memory, local-folder and S3 stores; exactly-once commits first."""

from __future__ import annotations

import http.client
import http.server
import os
import threading
from pathlib import Path

import boto3
import pytest

from orchestrator import defaults
from orchestrator.errors import ExistsError, StorageError
from orchestrator.storage import LocalStore, MemoryStore, S3Store, Store, check_uri, open_store, split_uri
from orchestrator.storage.base import check_key, drain_storage_stats

MiB = 1024 * 1024


# --- exactly-once commits ---------------------------------------------------------------------

def test_put_if_absent_writes_a_new_key(store: Store) -> None:
    assert store.put_if_absent("k", b"first") is True
    assert store.get("k") == b"first"


def test_put_if_absent_refuses_different_bytes_and_keeps_the_first(store: Store) -> None:
    store.put_if_absent("k", b"first")
    assert store.put_if_absent("k", b"second") is False
    assert store.get("k") == b"first"


def test_put_if_absent_of_the_same_bytes_again_succeeds(store: Store) -> None:
    store.put_if_absent("k", b"same")
    assert store.put_if_absent("k", b"same") is True
    assert store.get("k") == b"same"


def test_put_if_absent_does_not_overwrite_a_put(store: Store) -> None:
    store.put("k", b"plain")
    assert store.put_if_absent("k", b"other") is False
    assert store.get("k") == b"plain"


def test_put_replaces(store: Store) -> None:
    store.put("k", b"one")
    store.put("k", b"two")
    assert store.get("k") == b"two"


def test_empty_objects_are_objects(store: Store) -> None:
    assert store.put_if_absent("empty", b"") is True
    assert (store.get("empty"), store.size("empty"), store.exists("empty")) == (b"", 0, True)


# --- reading ----------------------------------------------------------------------------------

def test_get_of_a_missing_key_raises_storage_error(store: Store) -> None:
    with pytest.raises(StorageError):
        store.get("absent")


def test_get_range_returns_bytes_start_to_end_exclusive(store: Store) -> None:
    store.put("k", b"0123456789")
    assert store.get_range("k", 2, 5) == b"234"
    assert store.get_range("k", 0, 10) == b"0123456789"


def test_get_range_past_the_end_is_clamped(store: Store) -> None:
    store.put("k", b"0123456789")
    assert store.get_range("k", 8, 100) == b"89"


@pytest.mark.parametrize("start,end", [(3, 3), (5, 4), (5, 2)])
def test_get_range_of_an_empty_or_reversed_range_is_empty(store: Store, start: int, end: int) -> None:
    store.put("k", b"0123456789")
    assert store.get_range("k", start, end) == b""


def test_size_is_none_for_a_missing_key(store: Store) -> None:
    assert store.size("absent") is None
    assert not store.exists("absent")


def test_size_is_the_byte_length(store: Store) -> None:
    store.put("dir/k", b"12345")
    assert store.size("dir/k") == 5
    assert store.exists("dir/k")


def test_size_is_none_for_a_key_that_is_only_a_folder_of_others(store: Store) -> None:
    store.put("dir/k", b"x")
    assert store.size("dir") is None


def test_fingerprint_changes_when_the_object_changes(store: Store) -> None:
    store.put("k", b"one")
    before = store.fingerprint("k")
    store.put("k", b"three")
    assert store.fingerprint("k") != before


def test_fingerprint_of_a_missing_key_raises(store: Store) -> None:
    with pytest.raises(StorageError):
        store.fingerprint("absent")


# --- listing ----------------------------------------------------------------------------------

def test_list_returns_keys_under_a_prefix_in_lexical_order(store: Store) -> None:
    for key in ["data/b", "data/a", "data/sub/c", "errors/x", "_manifest.json"]:
        store.put(key, b".")
    assert list(store.list("data/")) == ["data/a", "data/b", "data/sub/c"]
    assert list(store.list()) == ["_manifest.json", "data/a", "data/b", "data/sub/c", "errors/x"]


def test_list_of_an_absent_prefix_is_empty(store: Store) -> None:
    store.put("data/a", b".")
    assert list(store.list("nothing/")) == []


def test_list_prefix_is_a_string_prefix_not_a_folder(store: Store) -> None:
    for key in ["a/x", "ab", "a-c", "b"]:
        store.put(key, b".")
    assert list(store.list("a")) == ["a-c", "a/x", "ab"]


def test_list_of_a_partial_file_name_matches_it(store: Store) -> None:
    store.put("data/train-00001.parquet", b".")
    store.put("data/other", b".")
    assert list(store.list("data/train")) == ["data/train-00001.parquet"]


# --- child stores -----------------------------------------------------------------------------

def test_a_child_store_writes_under_its_prefix(store: Store) -> None:
    child = store.child("job-1")
    assert child.put_if_absent("data/a", b"x") is True
    assert store.get("job-1/data/a") == b"x"
    assert child.uri.endswith("/job-1")


def test_a_child_store_lists_keys_relative_to_itself(store: Store) -> None:
    store.put("job-1/data/a", b"x")
    store.put("job-2/data/b", b"y")
    assert list(store.child("job-1").list()) == ["data/a"]


def test_a_child_store_keeps_exactly_once_semantics(store: Store) -> None:
    child = store.child("job")
    child.put_if_absent("k", b"first")
    assert child.put_if_absent("k", b"second") is False
    assert child.get("k") == b"first"
    assert (child.size("k"), child.get_range("k", 1, 3)) == (5, b"ir")


@pytest.mark.parametrize("prefix", ["..", "a/../b", "", "/abs"])
def test_a_child_prefix_cannot_escape(store: Store, prefix: str) -> None:
    with pytest.raises(StorageError):
        store.child(prefix)


@pytest.mark.parametrize("key", ["../escape", "a/../b", "a/./b", "", "/abs", "a//b", "a/"])
def test_keys_that_could_escape_or_alias_are_rejected(store: Store, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        store.put_if_absent(key, b"x")


@pytest.mark.parametrize("key", ["..", "a/../b", "", "/abs", ".", "a//b"])
def test_check_key_rejects_dotdot_empty_and_absolute_keys(key: str) -> None:
    with pytest.raises(StorageError):
        check_key(key)


def test_check_key_accepts_nested_keys() -> None:
    assert check_key("data/train-00000-of-00001.parquet") == "data/train-00000-of-00001.parquet"


# --- uploads (an export's files) --------------------------------------------------------------

def test_an_upload_is_stored_whole_when_committed(store: Store) -> None:
    with store.open_upload("exports/out.jsonl") as up:
        up.write(b"one\n")
        up.write(b"two\n")
        assert not store.exists("exports/out.jsonl")
    assert store.get("exports/out.jsonl") == b"one\ntwo\n"
    assert up.uri.endswith("/exports/out.jsonl")


def test_an_upload_never_replaces_an_existing_key(store: Store) -> None:
    store.put("out.jsonl", b"mine")
    up = store.open_upload("out.jsonl")
    up.write(b"theirs")
    with pytest.raises(ExistsError, match="out.jsonl exists"):
        up.commit()
    assert store.get("out.jsonl") == b"mine"


def test_an_upload_with_overwrite_replaces_the_key(store: Store) -> None:
    store.put("out.jsonl", b"old")
    with store.open_upload("out.jsonl", overwrite=True) as up:
        up.write(b"new")
    assert store.get("out.jsonl") == b"new"


def test_an_upload_failing_midway_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.open_upload("d/out.jsonl") as up:
        up.write(b"half")
        raise RuntimeError("the source failed")
    assert not store.exists("d/out.jsonl") and list(store.list()) == []


def test_a_child_stores_upload_lands_under_its_prefix(store: Store) -> None:
    with store.child("job").open_upload("k") as up:
        up.write(b"x")
    assert store.get("job/k") == b"x"


# --- URIs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["out/../x", "../out", "/a/b/..", "file:///a/../b", "s3://bucket/a/../b",
                                 "s3://bucket/.."])
def test_check_uri_rejects_dotdot(uri: str) -> None:
    with pytest.raises(StorageError):
        check_uri(uri)


@pytest.mark.parametrize("uri,normal", [
    ("./out/", "out"),
    ("out//jobs/./x", "out/jobs/x"),
    ("  out  ", "out"),
    ("file:///tmp/out/", "/tmp/out"),
    ("s3://bucket/a/b/", "s3://bucket/a/b"),
    ("s3://bucket", "s3://bucket"),
    ("s3://bucket/", "s3://bucket"),
])
def test_check_uri_normalises(uri: str, normal: str) -> None:
    assert check_uri(uri) == normal


@pytest.mark.parametrize("uri", ["", "   ", "s3:///prefix", "gs://bucket/x", "http://host/x", "s3://bucket/a//b"])
def test_check_uri_rejects_unusable_uris(uri: str) -> None:
    with pytest.raises(StorageError):
        check_uri(uri)


@pytest.mark.parametrize("uri", ["file://out", "file://data/run1"])
def test_a_file_uri_with_a_host_is_rejected_not_silently_rerooted(uri: str) -> None:
    with pytest.raises(StorageError):
        check_uri(uri)


def test_open_store_picks_the_backend() -> None:
    s3 = open_store("s3://bucket/a/b/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.uri) == ("bucket", "a/b", "s3://bucket/a/b")
    assert isinstance(open_store("out"), LocalStore)


def test_split_uri_gives_the_folder_store_and_file_key(tmp_path: Path) -> None:
    store, key = split_uri(str(tmp_path / "in" / "p.jsonl"))
    assert isinstance(store, LocalStore) and store.root == tmp_path / "in" and key == "p.jsonl"
    s3, s3_key = split_uri("s3://bucket/in/p.jsonl")
    assert isinstance(s3, S3Store) and (s3.bucket, s3_key) == ("bucket", "in/p.jsonl")


def test_split_uri_of_a_bare_bucket_is_rejected() -> None:
    with pytest.raises(StorageError, match="names a bucket"):
        split_uri("s3://bucket")


# --- S3 specifics -----------------------------------------------------------------------------

@pytest.fixture()
def multipart(monkeypatch: pytest.MonkeyPatch) -> int:
    """Commits of 6 MiB or more go multipart in 5 MiB parts; returns a payload size needing 3 parts."""
    monkeypatch.setattr(defaults, "S3_MULTIPART_THRESHOLD", 6 * MiB)
    monkeypatch.setattr(defaults, "S3_MULTIPART_CHUNK", 5 * MiB)
    return 11 * MiB


def test_s3_multipart_commit_keeps_the_first_writer(bucket: str, multipart: int) -> None:
    store = open_store(f"s3://{bucket}/jobs")
    first, second = os.urandom(multipart), os.urandom(multipart)
    assert store.put_if_absent("big", first) is True
    assert store.put_if_absent("big", second) is False
    assert store.get("big") == first
    head = boto3.client("s3").head_object(Bucket=bucket, Key="jobs/big")
    assert head["ETag"].strip('"').endswith("-3")  # it really went multipart


def test_s3_refused_multipart_commit_leaves_no_pending_upload(bucket: str, multipart: int) -> None:
    store = open_store(f"s3://{bucket}")
    store.put_if_absent("big", os.urandom(multipart))
    store.put_if_absent("big", os.urandom(multipart))
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_multipart_commit_of_the_same_bytes_again_succeeds(bucket: str, multipart: int) -> None:
    store = open_store(f"s3://{bucket}")
    data = os.urandom(multipart)
    store.put_if_absent("big", data)
    assert store.put_if_absent("big", data) is True


def test_s3_check_writable_on_a_missing_bucket_names_it(s3_endpoint: str) -> None:
    with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist"):
        open_store("s3://no-such-bucket-here/prefix").check_writable()


def test_s3_check_writable_on_an_existing_bucket_passes(bucket: str) -> None:
    open_store(f"s3://{bucket}/any/prefix").check_writable()


def test_s3_keys_live_under_the_store_prefix(bucket: str) -> None:
    open_store(f"s3://{bucket}/a/b").put_if_absent("k", b"x")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["a/b/k"]


def test_an_s3_upload_streams_in_parts_holding_one_at_a_time(bucket: str) -> None:
    from orchestrator.storage.s3 import S3Upload

    chunks = [os.urandom(MiB) for _ in range(12)]
    up = S3Upload(S3Store(bucket, "exports"), "big.jsonl", False, part_bytes=5 * MiB)
    for chunk in chunks:
        up.write(chunk)
        assert len(up.buffer) < 5 * MiB
    assert len(up.parts) == 2  # uploaded as they filled, before the commit
    up.commit()
    assert open_store(f"s3://{bucket}/exports").get("big.jsonl") == b"".join(chunks)
    head = boto3.client("s3").head_object(Bucket=bucket, Key="exports/big.jsonl")
    assert head["ETag"].strip('"').endswith("-3")


def test_an_s3_multipart_upload_refused_at_commit_leaves_no_pending_upload(bucket: str) -> None:
    from orchestrator.storage.s3 import S3Upload

    S3Store(bucket).put("big.jsonl", b"mine")
    up = S3Upload(S3Store(bucket), "big.jsonl", False, part_bytes=5 * MiB)
    up.write(os.urandom(6 * MiB))
    with pytest.raises(ExistsError):
        up.commit()
    assert S3Store(bucket).get("big.jsonl") == b"mine"
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --- local specifics --------------------------------------------------------------------------

def test_local_store_leaves_no_temp_files_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_if_absent("d/k", b"first")
    store.put_if_absent("d/k", b"second")
    store.put_if_absent("d/k", b"first")
    store.put("d/p", b"x")
    store.put("d/p", b"y")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k", "p"]


def test_local_store_writes_below_its_root(tmp_path: Path) -> None:
    LocalStore(tmp_path / "root").put_if_absent("a/b", b"x")
    assert (tmp_path / "root" / "a" / "b").read_bytes() == b"x"


def test_listing_a_local_store_whose_root_does_not_exist_yet_is_empty(tmp_path: Path) -> None:
    (tmp_path / "sibling").write_text("x")
    store = LocalStore(tmp_path / "root")
    assert list(store.list()) == []
    assert list(store.list("data/")) == []


def test_local_check_writable_accepts_a_folder_yet_to_be_created(tmp_path: Path) -> None:
    LocalStore(tmp_path / "not" / "yet").check_writable()


def test_local_check_writable_refuses_a_root_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        LocalStore(tmp_path / "file" / "sub").check_writable()


def test_memory_store_counts_writes() -> None:
    store = MemoryStore()
    store.put_if_absent("a", b"1")
    store.put("b", b"2")
    assert store.puts == 2


class _Throttling(http.server.BaseHTTPRequestHandler):
    """A proxy in front of the S3 server that answers the first `throttle` PUTs 503 SlowDown, as S3
    does under load, and forwards every other request."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    throttle = 0

    def log_message(self, *_: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.command == "PUT" and type(self).throttle > 0:
            type(self).throttle -= 1
            reply = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        conn = http.client.HTTPConnection(self.upstream)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "host")}
        conn.request(self.command, self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward


def test_s3_calls_botocore_retried_after_a_503_are_counted(bucket: str, s3_endpoint: str) -> None:
    _Throttling.upstream, _Throttling.throttle = s3_endpoint.removeprefix("http://"), 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        drain_storage_stats()
        store = S3Store(bucket, "jobs", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}")
        assert store.put_if_absent("shard", b"rows") is True
        assert _Throttling.throttle == 0 and store.get("shard") == b"rows"
        assert drain_storage_stats()["retries"] == 2
    finally:
        server.shutdown()
