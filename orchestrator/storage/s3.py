"""S3 (and S3-compatible: MinIO, Ceph) backend through boto3.

Credentials and endpoint come from the standard AWS chain (environment, profile, instance or pod
role; `AWS_ENDPOINT_URL_S3` for other stores); they are never logged. Commits are conditional
PUTs (`If-None-Match: *`): a second writer of the same key gets HTTP 412 and the first is kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

from orchestrator import defaults
from orchestrator.errors import StorageError
from orchestrator.storage.base import Store, Upload, check_key, count_storage

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


@functools.lru_cache(maxsize=8)
def _client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": defaults.S3_MAX_ATTEMPTS})
    client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
    client.meta.events.register("after-call.s3", _count_call)
    return client


def _count_call(parsed: dict[str, Any], model: Any, **_: Any) -> None:
    """botocore hook: every S3 call, its outcome and how often botocore retried it."""
    meta = parsed.get("ResponseMetadata", {})
    outcome = "ok" if meta.get("HTTPStatusCode", 500) < 400 else "error"
    count_storage(model.name, outcome, int(meta.get("RetryAttempts", 0)))


def _etag(data: bytes) -> str:
    """The ETag S3 gives `data` as put_if_absent uploads it (single PUT or multipart)."""
    if len(data) < defaults.S3_MULTIPART_THRESHOLD:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    chunk = defaults.S3_MULTIPART_CHUNK
    parts = [hashlib.md5(data[i:i + chunk], usedforsecurity=False).digest() for i in range(0, len(data), chunk)]
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def _code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._endpoint = endpoint_url

    @property
    def s3(self) -> Any:
        return _client(self._endpoint)

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def _fail(self, op: str, key: str, e: Exception) -> StorageError:
        return StorageError(f"S3 {op} s3://{self.bucket}/{self._k(key)} failed: {_code(e) or e}")

    def _etag_matches(self, key: str, data: bytes) -> bool:
        """After a 412: does the stored object hold exactly our bytes (a retried PUT of ours)?"""
        head = self.s3.head_object(Bucket=self.bucket, Key=self._k(key))
        return head["ETag"].strip('"') == _etag(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            if len(data) >= defaults.S3_MULTIPART_THRESHOLD:
                self._multipart(key, data, conditional=True)
            else:
                self.s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if _code(e) in _CONFLICT_CODES:
                return self._etag_matches(key, data)
            raise self._fail("conditional put", key, e) from e

    def _multipart(self, key: str, data: bytes, *, conditional: bool) -> None:
        k, chunk = self._k(key), defaults.S3_MULTIPART_CHUNK
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=k)
        try:
            parts = []
            for i, start in enumerate(range(0, len(data), chunk), start=1):
                r = self.s3.upload_part(Bucket=self.bucket, Key=k, UploadId=upload["UploadId"],
                                        PartNumber=i, Body=data[start:start + chunk])
                parts.append({"PartNumber": i, "ETag": r["ETag"]})
            extra = {"IfNoneMatch": "*"} if conditional else {}
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload["UploadId"],
                                              MultipartUpload={"Parts": parts}, **extra)
        except Exception:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload["UploadId"])
            raise

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        except ClientError as e:
            raise self._fail("put", key, e) from e

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as e:
            raise self._fail("delete", key, e) from e

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except ClientError as e:
            raise self._fail("get", key, e) from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        from botocore.exceptions import ClientError

        if end <= start:
            return b""
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end - 1}")
            return r["Body"].read()
        except ClientError as e:
            raise self._fail("ranged get", key, e) from e

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("head", key, e) from e

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def fingerprint(self, key: str) -> str:
        head = self._head(key)
        if head is None:
            raise StorageError(f"s3://{self.bucket}/{self._k(key)} does not exist")
        return f"{head['ContentLength']}-{head['ETag'].strip(chr(34))}"

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(base):]

    def open_upload(self, key: str, *, overwrite: bool = False) -> Upload:
        return S3Upload(self, check_key(key), overwrite)

    def check_writable(self) -> None:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except (NoCredentialsError, PartialCredentialsError):
            raise StorageError(
                f"no AWS credentials for s3://{self.bucket}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the workers a role"
            ) from None
        except ClientError as e:
            code = _code(e)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"bucket {self.bucket!r} does not exist: create it or fix the URI") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(f"access to bucket {self.bucket!r} denied ({code}): check the credentials") from None
            raise StorageError(f"cannot reach bucket {self.bucket!r}: {code or e}") from None
        except Exception as e:  # endpoint unreachable and similar
            raise StorageError(f"cannot reach bucket {self.bucket!r}: {e}") from None


class S3Upload(Upload):
    """Streamed as a multipart upload, one part of `part_bytes` held at a time (an object that stays
    smaller is one PUT); committed with `If-None-Match: *` unless `overwrite`, so an existing object is
    never replaced, and aborted on failure so no part is left behind. At 10,000 parts (S3's limit) of
    the default size, an object holds up to 80 GiB."""

    def __init__(self, store: S3Store, key: str, overwrite: bool, *, part_bytes: int = defaults.EXPORT_PART_BYTES):
        super().__init__(store, key, overwrite)
        self.s3, self.bucket, self.object_key = store.s3, store.bucket, store._k(key)
        self.part_bytes, self.buffer, self.parts = part_bytes, bytearray(), []
        self.upload_id: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.object_key}"

    def _fail(self, op: str, e: Exception) -> StorageError:
        return StorageError(f"S3 {op} {self.uri} failed: {_code(e) or e}")

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.part_bytes:
            self._upload_part()

    def _upload_part(self) -> None:
        from botocore.exceptions import ClientError

        try:
            if self.upload_id is None:
                self.upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.object_key)["UploadId"]
            number = len(self.parts) + 1
            r = self.s3.upload_part(Bucket=self.bucket, Key=self.object_key, UploadId=self.upload_id,
                                    PartNumber=number, Body=bytes(self.buffer))
        except ClientError as e:
            raise self._fail("multipart upload", e) from e
        self.parts.append({"PartNumber": number, "ETag": r["ETag"]})
        self.buffer = bytearray()

    def commit(self) -> None:
        from botocore.exceptions import ClientError

        extra = {} if self.overwrite else {"IfNoneMatch": "*"}
        try:
            if self.upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=self.object_key, Body=bytes(self.buffer), **extra)
            else:
                if self.buffer:
                    self._upload_part()
                self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.object_key, UploadId=self.upload_id,
                                                  MultipartUpload={"Parts": self.parts}, **extra)
                self.upload_id = None
        except ClientError as e:
            self.abort()
            if _code(e) in _CONFLICT_CODES:
                raise self.exists() from None
            raise self._fail("upload", e) from e
        except BaseException:  # the last part failed, or the call was interrupted
            self.abort()
            raise
        finally:
            self.buffer = bytearray()

    def abort(self) -> None:
        """Drop what was written; a part S3 keeps after a failed abort is only storage (a bucket lifecycle
        rule for incomplete multipart uploads removes it), never a visible object."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.buffer = bytearray()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(BotoCoreError, ClientError):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key, UploadId=upload_id)
