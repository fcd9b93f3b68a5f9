"""Local and S3 storage behind one interface, against a real S3 server (moto's, on loopback)."""

import pytest

from fpa_core import storage


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.server)])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs"


def test_write_read_list_remove(root):
    uri = storage.join(root, "checkpoints", "a.pt")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"one")
    storage.write_bytes(uri, b"two")
    storage.write_bytes(storage.join(root, "checkpoints", "b.pt"), b"x")
    storage.write_bytes(storage.join(root, "summary.json"), b"{}")
    assert storage.read_bytes(uri) == b"two"
    assert storage.exists(uri) and storage.exists(storage.join(root, "checkpoints"))
    assert storage.list_names(storage.join(root, "checkpoints")) == ["a.pt", "b.pt"]
    assert storage.list_names(root) == ["checkpoints", "summary.json"]
    storage.remove(uri)
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(uri)
    assert storage.list_names(storage.join(root, "nothing-here")) == []


def test_local_writes_leave_no_temporary_files(tmp_path):
    storage.write_bytes(tmp_path / "f.bin", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_s3_uri_must_name_a_bucket(s3_bucket):
    with pytest.raises(ValueError, match="must name a bucket"):
        storage.read_bytes("s3:///key")


def test_missing_bucket_reads_as_missing(s3_bucket):
    with pytest.raises(FileNotFoundError, match="no bucket"):
        storage.read_bytes("s3://no-such-bucket-fpa/key")


def test_s3_calls_retry_with_adaptive_backoff(monkeypatch):
    from fpa_core.storage import _client_for

    monkeypatch.setenv("FPA_S3_MAX_ATTEMPTS", "4")
    _client_for.cache_clear()
    try:
        retries = _client_for("http://127.0.0.1:1").meta.config.retries
    finally:
        _client_for.cache_clear()
    assert retries["mode"] == "adaptive" and retries["total_max_attempts"] == 4


def test_files_stream_in_and_out_atomically(root, tmp_path):
    uri = storage.join(root, "checkpoints", "big.pt")
    with storage.writing(uri) as path:
        path.write_bytes(b"first")
    with pytest.raises(RuntimeError), storage.writing(uri) as path:  # a writer that fails publishes nothing
        path.write_bytes(b"half")
        raise RuntimeError("disk gone")
    with storage.reading(uri) as path:
        assert path.read_bytes() == b"first"
    storage.copy(uri, storage.join(root, "copy.pt"))
    storage.copy(uri, str(tmp_path / "local-copy.pt"))
    assert storage.read_bytes(storage.join(root, "copy.pt")) == (tmp_path / "local-copy.pt").read_bytes() == b"first"
    with pytest.raises(FileNotFoundError), storage.reading(storage.join(root, "none.pt")):
        pass
    if not storage.is_s3(root):
        assert sorted(p.name for p in (tmp_path / "store" / "checkpoints").iterdir()) == ["big.pt"]


def test_large_files_go_to_s3_in_parts(s3_bucket, monkeypatch):
    """A file above the multipart threshold is sent as parts (its ETag says how many): no single PUT, no 5 GB
    limit, a failed part sent again alone. The threshold is lowered to S3's 5 MB minimum part for the test."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    monkeypatch.setattr(storage, "_transfer_config", lambda: TransferConfig(
        multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20))
    data = bytes(range(256)) * (11 * 2**20 // 256)  # 11 MB: three parts
    uri = f"s3://{s3_bucket}/big.bin"
    with storage.writing(uri) as path:
        path.write_bytes(data)
    etag = boto3.client("s3").head_object(Bucket=s3_bucket, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-3"), etag
    with storage.reading(uri) as path:
        assert path.read_bytes() == data
