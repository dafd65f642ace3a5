"""spec.tls: what it renders (redis.conf, sentinel.conf, the exporter's arguments, the client's
command and URIs), where it is refused so far, and the local runtime's certificates (issued once,
renewed when due). The servers themselves are in tests/integration/test_tls_local.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from middleware import tls
from middleware.endpoints import ClientTls, Endpoint
from middleware.engines.redis import config
from middleware.engines.redis.engine import RedisEngine
from middleware.errors import SpecError
from middleware.runtime.local import LocalRuntime
from middleware.spec import ResolvedSpec
from tests.unit.manifests import middleware_spec


def _spec(topology: str = "standalone", engine: str = "redis", **extra: Any) -> ResolvedSpec:
    return middleware_spec("vault", "prod", {"engine": engine, "topology": topology, **extra})


TLS_ON = {"tls": {"enabled": True}}


@pytest.mark.parametrize("render", [config.redis_conf, config.sentinel_conf])
def test_tls_closes_the_plaintext_port_and_serves_the_deployments_certificates(render: Any) -> None:
    lines = render(_spec("sentinel", **TLS_ON)).splitlines()
    assert "port 0" in lines and "tls-port ${PORT}" in lines
    assert "port ${PORT}" not in lines
    assert {
        "tls-cert-file ${TLS_DIR}/tls.crt",
        "tls-key-file ${TLS_DIR}/tls.key",
        "tls-ca-cert-file ${TLS_DIR}/ca.crt",
        "tls-auth-clients optional",
        "tls-replication yes",
    } <= set(lines)


@pytest.mark.parametrize("render", [config.redis_conf, config.sentinel_conf])
def test_without_tls_nothing_of_it_is_rendered(render: Any) -> None:
    text = render(_spec("sentinel"))
    assert "port ${PORT}" in text.splitlines()
    assert "tls-" not in text


def test_the_exporter_scrapes_a_tls_member_with_the_deployments_ca() -> None:
    exporter = config.exporter(_spec(**TLS_ON))
    assert exporter is not None
    argv = exporter.arguments("127.0.0.1:9", "127.0.0.1:6379", "/state/prod/vault/tls")
    assert "-redis.addr=rediss://127.0.0.1:6379" in argv
    assert "-tls-ca-cert-file=/state/prod/vault/tls/ca.crt" in argv
    assert "-tls-client-cert-file=/state/prod/vault/tls/tls.crt" in argv
    assert config.exporter(_spec()) is config.EXPORTER


@pytest.mark.parametrize(
    ("engine", "topology"),
    [
        ("redis", "cluster"),
        ("postgresql", "standalone"),
        ("zookeeper", "ensemble"),
        ("mongodb", "replicaset"),
    ],
)
def test_tls_is_refused_where_it_is_not_offered_yet_naming_the_field(engine: str, topology: str) -> None:
    with pytest.raises(SpecError) as error:
        _spec(topology, engine, **TLS_ON)
    assert error.value.field == "spec.tls.enabled"
    assert f"not yet for {engine} {topology}" in str(error.value)
    assert "redis standalone, redis sentinel" in str(error.value)


def test_tls_off_or_absent_resolves_as_before() -> None:
    assert _spec().tls is False
    assert _spec(tls={"enabled": False}).tls is False
    assert _spec("sentinel", **TLS_ON).tls is True


def test_the_operator_refuses_tls_so_far() -> None:
    from middleware.catalog import load_default_catalog
    from operators.kube import context

    body = {
        "apiVersion": "moorage.io/v1alpha1",
        "kind": "Middleware",
        "metadata": {"name": "vault", "namespace": "prod"},
        "spec": {"engine": "redis", "topology": "standalone", **TLS_ON},
    }
    with pytest.raises(SpecError) as error:
        context.decode(body, rt=None, with_catalog=load_default_catalog())  # type: ignore[arg-type]
    assert error.value.field == "spec.tls.enabled" and "Kubernetes" in str(error.value)


def test_the_client_command_and_uris_speak_tls() -> None:
    engine = RedisEngine()
    spec = _spec("sentinel", **TLS_ON)
    client_tls = ClientTls("/t/ca.crt", "/t/tls.crt", "/t/tls.key")
    command = engine.client_command(spec, "127.0.0.1:7000", "pw", client_tls)
    assert command.argv[-7:] == [
        "--tls",
        "--cacert",
        "/t/ca.crt",
        "--cert",
        "/t/tls.crt",
        "--key",
        "/t/tls.key",
    ]
    assert "pw" not in command.argv
    endpoints = {"master": "127.0.0.1:7000", "sentinels": "127.0.0.1:7001", "masterName": "vault"}
    uris = [a.uri for a in engine.client_access(spec, endpoints, "pw")]
    assert uris[0].startswith("rediss://") and uris[1].startswith("rediss+sentinel://")
    assert engine.client_access(_spec("sentinel"), endpoints, "pw")[0].uri.startswith("redis://")


def test_an_endpoint_keeps_its_tls_for_the_addresses_a_member_reports() -> None:
    client_tls = ClientTls("/t/ca.crt")
    asked = Endpoint("127.0.0.1", 7000, client_tls)
    reported = asked.with_address("127.0.0.1:7001")
    assert reported.tls is client_tls
    assert Endpoint("127.0.0.1", 7001) == reported  # TLS is not part of which member it is


def test_the_local_runtime_issues_the_certificates_once_and_renews_them_when_due(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path)
    spec = _spec(**TLS_ON)
    now = datetime.now(UTC)
    assert runtime._ensure_tls(spec, now=now) is False  # issued: nothing was running with another
    directory = tmp_path / "prod" / "vault" / "tls"
    assert {p.name for p in directory.iterdir()} == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert (directory / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (directory / "tls.key").stat().st_mode & 0o777 == 0o600
    first = tls.KeyPair((directory / "tls.crt").read_bytes(), (directory / "tls.key").read_bytes())
    assert tls.names_of(first) == (["localhost"], ["127.0.0.1"])

    assert runtime._ensure_tls(spec, now=now + timedelta(days=30)) is False  # not due yet
    assert (directory / "tls.crt").read_bytes() == first.cert_pem

    ca_before = (directory / "ca.crt").read_bytes()
    assert runtime._ensure_tls(spec, now=now + timedelta(days=70)) is True  # a third of 90 days left
    renewed = tls.KeyPair((directory / "tls.crt").read_bytes(), (directory / "tls.key").read_bytes())
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert (directory / "ca.crt").read_bytes() == ca_before  # the CA stays: clients keep trusting
    client_tls = runtime.client_tls(spec)
    assert client_tls is not None and client_tls.ca_file == str(directory / "ca.crt")
    assert runtime.client_tls(_spec()) is None


def test_turning_tls_on_or_off_for_an_existing_deployment_is_refused_naming_the_field() -> None:
    from middleware.engines.registry import get_engine
    from middleware.spec import check_change

    plain, sealed = _spec("sentinel"), _spec("sentinel", **TLS_ON)
    for old, new in ((plain, sealed), (sealed, plain)):
        with pytest.raises(SpecError) as error:
            check_change(old, new, get_engine("redis"))
        assert error.value.field == "spec.tls.enabled"
        assert "restore a backup into it" in str(error.value)
    check_change(sealed, _spec("sentinel", replicas=3, **TLS_ON), get_engine("redis"))
