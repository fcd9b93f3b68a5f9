"""Local paths and ``s3://bucket/key`` URIs behind one small interface.

S3 goes through boto3 (imported only when an s3:// URI is used). The endpoint comes from
``AWS_ENDPOINT_URL`` (MinIO, Ceph and other S3-compatible stores), credentials only from the
standard AWS environment variables, shared files or profile; nothing here logs or stores them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(base: str | os.PathLike, *parts: str) -> str:
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The object's bytes; FileNotFoundError when there is none."""
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = _split(uri)
    client = _client()
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        raise FileNotFoundError(f"no object at {uri}") from None
    except client.exceptions.NoSuchBucket:
        raise FileNotFoundError(f"no bucket {bucket!r} for {uri}") from None


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write atomically: a reader sees the old object or the new one, never a part."""
    if is_s3(uri):
        bucket, key = _split(uri)
        _client().put_object(Bucket=bucket, Key=key, Body=data)  # a PUT is atomic
        return
    with writing(uri) as path:
        path.write_bytes(data)


@contextlib.contextmanager
def writing(uri: str | os.PathLike) -> Iterator[Path]:
    """A local file to write the object into, in one pass and without holding it in memory; published
    atomically when the block ends without an error (a reader sees the old object or the new one), discarded
    otherwise. Local: a temporary file beside it, synced, then renamed. S3: a temporary file, then boto3's
    managed transfer, in parts of 64 MB for large files (a failed part is sent again, not the whole file;
    no 5 GB limit); the object appears when the last part is in."""
    if is_s3(uri):
        bucket, key = _split(uri)
        fd, tmp = tempfile.mkstemp(prefix="fpa-upload-", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
            _client().upload_file(tmp, bucket, key, Config=_transfer_config())
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def reading(uri: str | os.PathLike) -> Iterator[Path]:
    """The object as a local file, for as long as the block runs: a local path as it is; an S3 object
    downloaded to a temporary file (boto3's managed transfer, in parts), removed afterwards (a file mapped into
    memory stays readable after that). FileNotFoundError when there is none."""
    if not is_s3(uri):
        if not Path(uri).is_file():
            raise FileNotFoundError(f"no file at {uri}")
        yield Path(uri)
        return
    bucket, key = _split(uri)
    fd, tmp = tempfile.mkstemp(prefix="fpa-download-", suffix=".tmp")
    os.close(fd)
    try:
        from botocore.exceptions import ClientError

        try:
            _client().download_file(bucket, key, tmp, Config=_transfer_config())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket"):
                raise FileNotFoundError(f"no object at {uri}") from None
            raise
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def copy(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy an object or file (any size, never whole in memory): within S3, a server-side managed copy."""
    if is_s3(source) and is_s3(dest):
        (src_bucket, src_key), (bucket, key) = _split(source), _split(dest)
        _client().copy({"Bucket": src_bucket, "Key": src_key}, bucket, key, Config=_transfer_config())
        return
    with reading(source) as local, writing(dest) as out:
        shutil.copyfile(local, out)


def exists(uri: str | os.PathLike) -> bool:
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = _split(uri)
    response = _client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(obj["Key"] == key or obj["Key"].startswith(key.rstrip("/") + "/")
               for obj in response.get("Contents", []))


def list_names(uri: str | os.PathLike) -> list[str]:
    """Names directly under a folder or prefix, sorted; [] when there is none."""
    if not is_s3(uri):
        path = Path(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    bucket, prefix = _split(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    names = set()
    for page in _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        names.update(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
    return sorted(names)


def size(uri: str | os.PathLike) -> int:
    """The bytes of everything under a folder or prefix (or of one file); 0 when there is nothing."""
    if not is_s3(uri):
        path = Path(uri)
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
    bucket, key = _split(uri)
    pages = _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    return sum(obj["Size"] for page in pages for obj in page.get("Contents", [])
               if obj["Key"] == key or obj["Key"].startswith(key.rstrip("/") + "/"))


def remove(uri: str | os.PathLike) -> None:
    if is_s3(uri):
        bucket, key = _split(uri)
        _client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)


_LOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE, errno.ENOTCONN}


def is_lost_storage(error: BaseException) -> bool:
    """Whether ``error`` says the disk or the storage is gone: full, failing, read-only or unmounted, or (where
    boto3 is installed) an S3 endpoint still not answering after the retries, or refusing requests."""
    if isinstance(error, OSError) and error.errno in _LOST_ERRNOS:
        return True
    try:
        from boto3.exceptions import Boto3Error  # a managed transfer's failure (S3UploadFailedError, ...)
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return False
    return isinstance(error, (Boto3Error, BotoCoreError, ClientError))


def location_problem(uri: str | os.PathLike | None) -> str | None:
    """What is wrong with a folder or s3:// location given on a command line, or None."""
    if uri is not None and is_s3(uri) and not str(uri)[len("s3://"):].partition("/")[0]:
        return f"{uri}: an S3 location must name a bucket, e.g. s3://my-bucket/runs"
    return None


def unreachable(uri: str | os.PathLike, timeout: float = 10.0) -> str | None:
    """Why a folder or s3:// location cannot be written now, without writing anything, or None: a local folder
    must be (or be creatable under) a writable folder; a bucket must answer, once, within ``timeout`` seconds."""
    if not is_s3(uri):
        path = Path(uri).absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable"
        return None
    bucket, _ = _split(uri)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return "s3:// locations need boto3: pip install boto3"
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout)
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            return f"the bucket {bucket!r} does not exist (at {client.meta.endpoint_url}); create it first"
        return f"the bucket {bucket!r} refused the request ({code or e}); check the AWS_* credentials"
    except BotoCoreError as e:
        return f"no answer from the S3 endpoint {client.meta.endpoint_url} ({type(e).__name__}: {e})"
    return None


def _split(uri: str | os.PathLike) -> tuple[str, str]:
    bucket, _, key = str(uri)[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: an S3 URI must name a bucket, e.g. s3://my-bucket/runs")
    return bucket, key


def _client():
    return _client_for(os.environ.get("AWS_ENDPOINT_URL") or None)


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=4)


@functools.lru_cache(maxsize=4)
def _client_for(endpoint_url: str | None):
    try:
        import boto3
    except ImportError:
        raise RuntimeError("s3:// locations need boto3: pip install boto3") from None
    from botocore.config import Config

    # Outages of seconds are ridden out: botocore's adaptive retries with backoff, a bounded number of attempts
    # (FPA_S3_MAX_ATTEMPTS), and timeouts (FPA_S3_TIMEOUT seconds to read an answer) that end a dead endpoint's
    # calls instead of hanging on them.
    attempts = int(os.environ.get("FPA_S3_MAX_ATTEMPTS", "10"))
    timeout = float(os.environ.get("FPA_S3_TIMEOUT", "120"))
    config = Config(retries={"mode": "adaptive", "total_max_attempts": attempts}, connect_timeout=min(10.0, timeout),
                    read_timeout=timeout)
    # boto3 reads AWS_ENDPOINT_URL itself (botocore >= 1.31); passing it keeps older releases working.
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)
