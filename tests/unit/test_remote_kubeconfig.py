"""Kubeconfigs of another cluster (RedisSync ``kubeconfig`` sides): what is refused and why, and that
the client is built in memory. The end-to-end path is tests/k8s/test_sync_kubeconfig.py."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
import yaml

from middleware.runtime.kubernetes import KubeconfigError, KubernetesRuntime, parse_kubeconfig

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot-checked-here\n-----END CERTIFICATE-----\n").decode()


def _doc(user: dict[str, Any], cluster: dict[str, Any] | None = None, **top: Any) -> str:
    document = {
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://b.example:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    document.update(top)
    return yaml.safe_dump(document)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [b\n  c: secret-value", "not valid YAML (line 2"),
        ("just text", "not a kubeconfig"),
        (_doc({"token": "t"}, **{"current-context": "other"}), "context 'other' is not defined"),
        (_doc({"auth-provider": {"name": "oidc"}}), "sets auth-provider: refused"),
        (_doc({"exec": {"command": "sh"}}), "sets exec: refused, it would run a credential plugin"),
        (_doc({"client-certificate": "/etc/x.crt", "client-key": "/etc/x.key"}), "sets client-certificate"),
        (
            _doc({"token": "t"}, {"server": "https://b", "certificate-authority": "/ca"}),
            "certificate-authority",
        ),
        (_doc({"token": "t"}, {"server": "http://b.example"}), "needs an https:// server"),
        (_doc({"username": "u", "password": "p"}), "no usable credentials"),
    ],
)
def test_unusable_kubeconfigs_are_refused_without_quoting_them(text: str, expected: str) -> None:
    with pytest.raises(KubeconfigError) as caught:
        KubernetesRuntime.from_kubeconfig(text)
    assert expected in str(caught.value)
    # values from the document never reach the message
    assert "secret-value" not in str(caught.value) and "/etc/x" not in str(caught.value)


def test_the_only_context_is_used_without_current_context() -> None:
    text = _doc({"token": "t"})
    document = yaml.safe_load(text)
    del document["current-context"]
    cluster, user = parse_kubeconfig(yaml.safe_dump(document))
    assert cluster["server"] == "https://b.example:6443" and user == {"token": "t"}
    document["contexts"].append({"name": "y", "context": {"cluster": "c", "user": "u"}})
    with pytest.raises(KubeconfigError, match="no current-context and more than one context"):
        parse_kubeconfig(yaml.safe_dump(document))


def test_client_certificates_live_in_memory_files_closed_with_the_runtime() -> None:
    cert, key = b"CERT-BYTES", b"KEY-BYTES"
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    rt = KubernetesRuntime.from_kubeconfig(
        _doc(user, {"server": "https://b:6443", "certificate-authority-data": CA})
    )
    conf = rt.api.configuration
    assert conf.host == "https://b:6443" and conf.ca_cert_data.startswith("-----BEGIN CERTIFICATE-----")
    assert rt.request_timeout is not None
    paths = [conf.cert_file, conf.key_file]
    assert all(p.startswith("/proc/self/fd/") for p in paths)
    # memfds: anonymous memory, no file on any filesystem
    assert [os.readlink(p) for p in paths] == [
        "/memfd:kubeconfig-client-cert (deleted)",
        "/memfd:kubeconfig-client-key (deleted)",
    ]
    with open(paths[0], "rb") as f:
        assert f.read() == cert
    fds = list(rt.owned_fds)
    rt.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_token_is_sent_as_bearer() -> None:
    rt = KubernetesRuntime.from_kubeconfig(_doc({"token": "abc.def.ghi"}))
    assert rt.api.configuration.auth_settings()["BearerToken"]["value"] == "Bearer abc.def.ghi"
    rt.close()
