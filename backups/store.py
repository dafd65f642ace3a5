"""S3 access for backups: streaming multipart uploads with bounded memory, streaming reads.

Memory holds at most one part (plus the copy made when it is assembled), whatever the object size.
Every upload computes the sha256 of the whole object on the fly (it goes into the manifest) and
sends a SHA256 checksum per part, so the server rejects a part damaged in transit. Any failure
during a multipart upload aborts it: no orphaned parts are left to be billed.

S3 errors surface as ``StorageError`` (after boto3's "standard" retries) naming the bucket and
key; access keys are scrubbed from every message and never chained into the exception.

boto3 and botocore are imported by the methods that use them, not with this module: the operator
imports it with its backup handlers, and most operators never talk to S3 (botocore alone is 17 MiB
of the process).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

from backups.errors import ObjectNotFound, StorageError
from middleware.errors import SpecError
from middleware.models.backup import BackupRepositorySpec

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum number of parts per upload
READ_CHUNK = 1 << 20
DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per call

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SSE_ALGORITHMS = ("AES256", "aws:kms")
_NOT_FOUND_CODES = ("NoSuchKey", "404", "NotFound")
# Codes with which servers that lack flexible checksums refuse ChecksumAlgorithm on CreateMultipartUpload.
_NO_CHECKSUM_CODES = ("NotImplemented", "InvalidArgument", "InvalidRequest")
_URL_QUERY = ("endpoint", "region", "sse", "kmsKeyId", "pathStyle")

T = TypeVar("T")


@dataclass(frozen=True)
class RepositoryConfig:
    """Where backups live and how to reach them. The secret key never shows in ``repr``."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    force_path_style: bool = True
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    sse_algorithm: str | None = None
    sse_kms_key_id: str | None = None

    def __post_init__(self) -> None:
        _check_bucket(self.bucket, "bucket")
        if self.endpoint is not None:
            _check_endpoint(self.endpoint, "endpoint")
        if self.sse_algorithm is not None and self.sse_algorithm not in _SSE_ALGORITHMS:
            raise SpecError("sse", f"{self.sse_algorithm!r} is not one of {', '.join(_SSE_ALGORITHMS)}")
        if self.sse_kms_key_id and self.sse_algorithm != "aws:kms":
            raise SpecError("sse.kmsKeyId", "only valid with the aws:kms algorithm")
        # A prefix is a folder: no leading/trailing slash, so keys join with exactly one "/".
        object.__setattr__(self, "prefix", self.prefix.strip("/"))

    @classmethod
    def from_spec(cls, spec: BackupRepositorySpec, credentials: Mapping[str, str] | None) -> RepositoryConfig:
        """From a ``BackupRepository`` spec and the decoded data of its credentials Secret."""
        access_key_id = secret_access_key = None
        if spec.credentials is not None:
            ref = spec.credentials
            data = credentials or {}
            for field_name, key in (
                ("accessKeyIdKey", ref.access_key_id_key),
                ("secretAccessKeyKey", ref.secret_access_key_key),
            ):
                if not data.get(key):
                    raise SpecError(
                        f"spec.credentials.{field_name}",
                        f"Secret {ref.name!r} has no (or an empty) key {key!r}",
                    )
            access_key_id = data[ref.access_key_id_key]
            secret_access_key = data[ref.secret_access_key_key]
        sse = spec.server_side_encryption
        return cls(
            bucket=spec.bucket,
            prefix=spec.prefix,
            endpoint=spec.endpoint,
            region=spec.region,
            force_path_style=spec.force_path_style,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            sse_algorithm=sse.algorithm if sse else None,
            sse_kms_key_id=sse.kms_key_id if sse else None,
        )

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] = os.environ) -> RepositoryConfig:
        """``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&sse=AES256|aws:kms&kmsKeyId=K&pathStyle=false]``.

        Keys come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in ``env`` (unset: boto3's
        default chain). Credentials inside the URL are refused: URLs end up in logs and history.
        """
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise SpecError("repository URL", "must start with s3:// (s3://BUCKET[/PREFIX][?endpoint=...])")
        # Anywhere before the query: a secret containing "/" splits the authority, leaving the "@"
        # in the path.
        if "@" in url.split("?", 1)[0]:
            raise SpecError(
                "repository URL",
                "credentials are not accepted in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            )
        if parts.fragment:
            raise SpecError("repository URL", "a #fragment is not allowed")
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in _URL_QUERY:
                raise SpecError(f"repository URL ?{name}", f"unknown option; known: {', '.join(_URL_QUERY)}")
            if name in query:
                raise SpecError(f"repository URL ?{name}", "given twice")
            query[name] = value
        path_style = query.get("pathStyle", "true").lower()
        if path_style not in ("true", "false"):
            raise SpecError("repository URL ?pathStyle", "must be true or false")
        _check_bucket(parts.netloc, "repository URL bucket")
        return cls(
            bucket=parts.netloc,
            prefix=parts.path,
            endpoint=query.get("endpoint") or None,
            region=query.get("region") or "us-east-1",
            force_path_style=path_style == "true",
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            sse_algorithm=query.get("sse") or None,
            sse_kms_key_id=query.get("kmsKeyId") or None,
        )

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key(self, *parts: str) -> str:
        """A key under the prefix: ``key("ns", "mw")`` -> ``"<prefix>/ns/mw"``."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


def _check_bucket(bucket: str, what: str) -> None:
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        # Echo the value only when it cannot be a mangled credential (no ':' or other separators).
        shown = repr(bucket) if re.fullmatch(r"[A-Za-z0-9._-]{0,70}", bucket) else "the value"
        raise SpecError(
            what, f"{shown} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.' and '-')"
        )


def _check_endpoint(endpoint: str, what: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(what, "must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise SpecError(what, "credentials are not accepted in the endpoint URL")


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    sha256: str


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def read_part(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of stream (short reads from pipes are retried)."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = stream.read(min(READ_CHUNK, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class S3Store:
    """One bucket. Keys are full keys (the repository adds its prefix)."""

    def __init__(self, config: RepositoryConfig, *, part_size: int = 8 << 20, max_attempts: int = 5) -> None:
        import boto3
        from botocore.config import Config

        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum part size {MIN_PART_SIZE}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.config = config
        self.bucket = config.bucket
        self.part_size = part_size
        self._part_checksums = True
        # An own session: boto3's default session is shared module state and not thread-safe.
        session = boto3.session.Session()
        self.client: S3Client = session.client(
            "s3",
            endpoint_url=config.endpoint,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                s3={"addressing_style": "path" if config.force_path_style else "auto"},
                # We send SHA256 ourselves; botocore's default extra CRC32 trailer (aws-chunked
                # bodies) is not understood by every S3-compatible server.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=10,
                read_timeout=120,
            ),
        )

    # -- error handling ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in (self.config.secret_access_key, self.config.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _fail(self, operation: str, key: str | None, exc: Exception) -> NoReturn:
        from botocore.exceptions import ClientError

        where = self.config.location(key) if key is not None else f"s3://{self.bucket}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or str(
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            )
            cls = ObjectNotFound if code in _NOT_FOUND_CODES else StorageError
            text = f"S3 {operation} of {where} failed: {code}: {message}"
        else:
            code = type(exc).__name__
            cls = StorageError
            text = f"S3 {operation} of {where} failed: {code}: {exc}"
        # ``from None``: botocore exceptions carry request details we do not want in tracebacks.
        raise cls(self._scrub(text), operation=operation, code=code) from None

    def _call(self, operation: str, key: str | None, fn: Callable[..., T], **kwargs: Any) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            self._fail(operation, key, exc)

    def _sse(self) -> dict[str, str]:
        extra: dict[str, str] = {}
        if self.config.sse_algorithm:
            extra["ServerSideEncryption"] = self.config.sse_algorithm
        if self.config.sse_kms_key_id:
            extra["SSEKMSKeyId"] = self.config.sse_kms_key_id
        return extra

    # -- bucket -------------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (safe to call every time)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404 and exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                self._fail("HeadBucket", None, exc)
        except BotoCoreError as exc:
            self._fail("HeadBucket", None, exc)
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.config.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            # Another writer created it between our HEAD and CREATE.
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                self._fail("CreateBucket", None, exc)
        except BotoCoreError as exc:
            self._fail("CreateBucket", None, exc)

    # -- writes -------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> PutResult:
        self._call(
            "PutObject",
            key,
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ChecksumSHA256=_b64_sha256(data),
            **self._sse(),
        )
        return PutResult(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def put_stream(
        self, key: str, stream: BinaryIO, on_bytes: Callable[[int], None] | None = None
    ) -> PutResult:
        """Upload ``stream`` to ``key`` part by part; on any failure the multipart upload is aborted.

        S3 failures raise ``StorageError``; an exception from the stream (or ``on_bytes``) is re-raised
        as it is, after the abort.
        """
        first = read_part(stream, self.part_size)
        if len(first) < self.part_size:
            result = self.put_bytes(key, first)
            if on_bytes is not None:
                on_bytes(result.size)
            return result
        upload_id = self._create_multipart(key)
        # Handed over in a list and dropped here, so no frame keeps the first part alive while
        # later parts are read: memory stays at one part (plus its assembly copy).
        pending = [first]
        del first
        try:
            return self._upload_parts(key, upload_id, pending, stream, on_bytes)
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _create_multipart(self, key: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, **self._sse()}
        if self._part_checksums:
            try:
                return self.client.create_multipart_upload(ChecksumAlgorithm="SHA256", **kwargs)["UploadId"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _NO_CHECKSUM_CODES:
                    self._fail("CreateMultipartUpload", key, exc)
                log.info("s3://%s does not take per-part SHA256 checksums; uploading without", self.bucket)
                self._part_checksums = False
            except BotoCoreError as exc:
                self._fail("CreateMultipartUpload", key, exc)
        return self._call("CreateMultipartUpload", key, self.client.create_multipart_upload, **kwargs)[
            "UploadId"
        ]

    def _upload_parts(
        self,
        key: str,
        upload_id: str,
        pending: list[bytes],
        stream: BinaryIO,
        on_bytes: Callable[[int], None] | None,
    ) -> PutResult:
        digest = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        size = 0
        part: bytes = pending.pop()
        number = 1
        while part:
            if number > MAX_PARTS:
                raise StorageError(
                    f"{self.config.location(key)} needs more than {MAX_PARTS} parts of "
                    f"{self.part_size} bytes: raise the part size",
                    operation="UploadPart",
                )
            digest.update(part)
            kwargs: dict[str, Any] = {}
            if self._part_checksums:
                kwargs = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64_sha256(part)}
            response = self._call(
                "UploadPart",
                key,
                self.client.upload_part,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=part,
                **kwargs,
            )
            entry: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
            if self._part_checksums:
                entry["ChecksumSHA256"] = kwargs["ChecksumSHA256"]
            parts.append(entry)
            size += len(part)
            if on_bytes is not None:
                on_bytes(len(part))
            last = len(part) < self.part_size
            # Drop the sent part before reading the next: one part in memory, not two.
            part = b""
            if not last:
                part = read_part(stream, self.part_size)
            number += 1
        self._call(
            "CompleteMultipartUpload",
            key,
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload=cast(Any, {"Parts": parts}),
        )
        return PutResult(key=key, size=size, sha256=digest.hexdigest())

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                "AbortMultipartUpload",
                key,
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except StorageError as exc:
            # The original failure matters more; the leftover upload is named for cleanup
            # (a bucket lifecycle rule on incomplete uploads catches it too).
            log.warning("could not abort multipart upload %s of %s: %s", upload_id, key, exc)

    def abort_uploads(self, prefix: str) -> int:
        """Abort every unfinished multipart upload under ``prefix`` (left by a killed process)."""
        count = 0
        for key, upload_id in self._uploads(prefix):
            self._abort(key, upload_id)
            count += 1
        return count

    def delete_keys(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        response = self._call(
            "DeleteObjects",
            keys[0],
            self.client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            where = self.config.location(str(first.get("Key")))
            raise StorageError(
                self._scrub(
                    f"S3 DeleteObjects failed for {len(errors)} of {len(keys)} keys, first "
                    f"{where}: {first.get('Code')}: {first.get('Message')}"
                ),
                operation="DeleteObjects",
                code=str(first.get("Code", "")),
            )

    # -- reads --------------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        """A small object (a manifest, a record) in memory; use ``open`` for data."""
        with self.open(key) as stream:
            return stream.read()

    def open(self, key: str) -> BinaryIO:
        """A streaming reader of the object; read it in chunks."""
        response = self._call("GetObject", key, self.client.get_object, Bucket=self.bucket, Key=key)
        raw = _BodyReader(response["Body"], lambda exc: self._fail("GetObject", key, exc))
        return cast(BinaryIO, io.BufferedReader(raw, READ_CHUNK))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            self._fail("HeadObject", key, exc)
        except BotoCoreError as exc:
            self._fail("HeadObject", key, exc)

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key starting with ``prefix``, in S3's (lexicographic) order, page by page."""
        for key, _modified in self.list_objects(prefix):
            yield key

    def list_objects(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Every key starting with ``prefix`` with the time it was written, page by page."""
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], item["LastModified"]
        except (ClientError, BotoCoreError) as exc:
            self._fail("ListObjectsV2", prefix, exc)

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every key starting with ``prefix`` with its size in bytes, page by page."""
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["Size"])
        except (ClientError, BotoCoreError) as exc:
            self._fail("ListObjectsV2", prefix, exc)

    def _uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    yield upload["Key"], upload["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            self._fail("ListMultipartUploads", prefix, exc)

    def pending_uploads(self, prefix: str = "") -> list[str]:
        """Keys with an unfinished multipart upload under ``prefix``."""
        return [key for key, _ in self._uploads(prefix)]


class _BodyReader(io.RawIOBase):
    """botocore's StreamingBody as a raw stream; read errors become ``StorageError``."""

    def __init__(self, body: Any, fail: Callable[[Exception], NoReturn]) -> None:
        self._body = body
        self._fail = fail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            self._fail(exc)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
