"""Local and S3 storage behind one interface, against a real S3 server (moto's, on loopback)."""

import pytest

from fpa_core import storage


@pytest.fixture(params=["local", "s3"])
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
