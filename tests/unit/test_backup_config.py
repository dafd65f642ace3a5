"""Repository configuration (spec and URL forms) and backup ids: pure, no S3 needed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from backups.repository import Repository
from backups.store import RepositoryConfig
from middleware.errors import SpecError
from middleware.models.backup import BackupRepositorySpec

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYsecret"
ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}


def test_url_with_every_option() -> None:
    config = RepositoryConfig.from_url(
        "s3://moorage-backups/prod/eu?endpoint=http://127.0.0.1:8333&region=eu-west-1&sse=aws:kms"
        "&kmsKeyId=alias/backups&pathStyle=false",
        ENV,
    )
    assert config.bucket == "moorage-backups" and config.prefix == "prod/eu"
    assert config.endpoint == "http://127.0.0.1:8333" and config.region == "eu-west-1"
    assert (config.sse_algorithm, config.sse_kms_key_id) == ("aws:kms", "alias/backups")
    assert config.force_path_style is False
    assert (config.access_key_id, config.secret_access_key) == ("AKIAEXAMPLE", SECRET)
    assert SECRET not in repr(config)
    assert config.key("shop", "cache") == "prod/eu/shop/cache"
    assert config.location("prod/eu/x") == "s3://moorage-backups/prod/eu/x"


def test_url_minimal_uses_defaults_and_default_credential_chain() -> None:
    config = RepositoryConfig.from_url("s3://bucket", {})
    assert (config.prefix, config.endpoint, config.region, config.sse_algorithm) == (
        "",
        None,
        "us-east-1",
        None,
    )
    assert config.access_key_id is None and config.secret_access_key is None
    assert config.key("ns") == "ns"


@pytest.mark.parametrize(
    ("url", "field", "reason"),
    [
        ("http://bucket/x", "repository URL", "must start with s3://"),
        ("s3://Bad_Bucket/x", "repository URL bucket", "not a valid S3 bucket name"),
        ("s3://bucket?color=blue", "repository URL ?color", "unknown option"),
        ("s3://bucket?region=a&region=b", "repository URL ?region", "given twice"),
        ("s3://bucket?endpoint=ftp://host", "endpoint", "http:// or https://"),
        ("s3://bucket?sse=rot13", "sse", "not one of AES256, aws:kms"),
        ("s3://bucket?sse=AES256&kmsKeyId=k", "sse.kmsKeyId", "only valid with the aws:kms"),
        ("s3://bucket?pathStyle=maybe", "repository URL ?pathStyle", "true or false"),
    ],
)
def test_bad_urls_name_the_field_and_reason(url: str, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        RepositoryConfig.from_url(url, {})
    assert caught.value.field == field
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@bucket/x",  # the secret's "/" splits the authority
        "s3://AKIAEXAMPLE:plainsecret@bucket/x",
        "s3://user@bucket",
    ],
)
def test_credentials_in_url_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(SpecError) as caught:
        RepositoryConfig.from_url(url, {})
    assert "credentials are not accepted" in str(caught.value)
    for part in ("AKIAEXAMPLE", "wJalrXUtnFEMI", "plainsecret", "user"):
        assert part not in str(caught.value)


def test_bad_bucket_with_separators_is_not_echoed() -> None:
    with pytest.raises(SpecError) as caught:
        RepositoryConfig.from_url("s3://host:9000/x", {})
    assert "9000" not in str(caught.value) and "not a valid S3 bucket name" in str(caught.value)


def test_from_spec_reads_the_secret_keys_the_spec_names() -> None:
    spec = BackupRepositorySpec.model_validate(
        {
            "bucket": "moorage-backups",
            "prefix": "/team/",
            "endpoint": "https://s3.example.com",
            "credentials": {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"},
            "serverSideEncryption": {"algorithm": "AES256"},
        }
    )
    config = RepositoryConfig.from_spec(spec, {"id": "AKIAEXAMPLE", "key": SECRET})
    assert (config.bucket, config.prefix, config.endpoint) == (
        "moorage-backups",
        "team",
        "https://s3.example.com",
    )
    assert (config.access_key_id, config.secret_access_key, config.sse_algorithm) == (
        "AKIAEXAMPLE",
        SECRET,
        "AES256",
    )
    assert SECRET not in repr(config)

    with pytest.raises(SpecError) as caught:
        RepositoryConfig.from_spec(spec, {"id": "AKIAEXAMPLE"})
    assert caught.value.field == "spec.credentials.secretAccessKeyKey"
    assert "'s3-creds'" in caught.value.reason and "'key'" in caught.value.reason

    anonymous = RepositoryConfig.from_spec(BackupRepositorySpec(bucket="moorage-backups"), None)
    assert anonymous.access_key_id is None and anonymous.sse_algorithm is None


def test_new_id_is_sortable_dns_safe_and_unique() -> None:
    moment = datetime(2026, 11, 23, 23, 51, 0, tzinfo=UTC)
    backup_id = Repository.new_id("cache", moment)
    assert re.fullmatch(r"cache-20261123t235100z-[0-9a-f]{4}", backup_id)
    # Other time zones and naive datetimes are taken as the same UTC instant.
    plus_one = moment.astimezone(timezone(timedelta(hours=1)))
    assert Repository.new_id("cache", plus_one).startswith("cache-20261123t235100z-")
    assert Repository.new_id("cache", moment.replace(tzinfo=None)).startswith("cache-20261123t235100z-")
    assert Repository.new_id("cache", moment) < Repository.new_id("cache", moment + timedelta(seconds=1))
    assert len({Repository.new_id("cache", moment) for _ in range(50)}) > 40
    long = Repository.new_id("a" * 60 + "_X", moment)
    assert len(long) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long)
