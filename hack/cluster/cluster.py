#!/usr/bin/env python3
"""A real single-node Kubernetes cluster on this machine: `make cluster-up` / `make cluster-down`.

Started, in order: a bridge (``moorage0``, 10.88.0.1/16), a private mount namespace (the kubelet
insists on three host-wide sysctls: inside the namespace they read as wanted, the host's never
change), containerd, the locally built images, etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, CoreDNS (a host process answering ``cluster.local`` on the bridge gateway),
the kubelet, kube-proxy (iptables rules for the service CIDR only, removed again by ``down``) and a
host-path volume provisioner (``hack/cluster/provisioner.py``, StorageClass ``moorage-local``).
Every process is recorded by PID under the state directory and stopped by that PID.

Every address is on this machine: etcd and the health ports on 127.0.0.1, the apiserver, the
kubelet and CoreDNS on the bridge gateway 10.88.0.1 (pods must reach them), pods on 10.88.0.0/16,
Services on 10.0.0.0/24. See docs/local-cluster.md.

Standard library only (it runs before any virtualenv exists); the provisioner is started with the
Python given by ``--python`` (the repo's virtualenv, which has the ``kubernetes`` client).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
K8S_VERSION = os.environ.get("MOORAGE_K8S_VERSION", "v1.36.3")
COREDNS_VERSION = os.environ.get("COREDNS_VERSION", "v1.15.0")
CACHE = Path(os.environ.get("MOORAGE_CACHE", str(Path.home() / ".cache" / "moorage")))
DEFAULT_STATE = Path(os.environ.get("MOORAGE_CLUSTER_DIR", "/var/tmp/moorage-cluster"))

BRIDGE = "moorage0"
GATEWAY = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_API_IP = "10.0.0.1"  # the `kubernetes` Service: the first address of the service CIDR
APISERVER_PORT = 16443
ETCD_CLIENT, ETCD_PEER, ETCD_METRICS = 12379, 12380, 12381
NODE_NAME = "moorage-local"
CLUSTER_DOMAIN = "cluster.local"
STORAGE_CLASS = "moorage-local"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
# Paths that containerd, the kubelet and the CNI plugins create whatever they are told: removed by
# `down` unless they existed before the first `up`.
FIXED_HOST_PATHS = (
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
)
DEBIAN_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "openssl")
IMAGES_HINT = "run `make images` (hack/build-images.sh)"


class ClusterError(RuntimeError):
    """Something the user can act on; the message says what."""


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = True, **kwargs: object) -> str:
    proc = subprocess.run(cmd, text=True, capture_output=capture, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise ClusterError(
            f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or '').strip()[-2000:]}"
        )
    return proc.stdout or ""


def wait_for(what: str, check: Callable[[], bool], timeout: float, logs: Iterable[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    tails = []
    for path in logs:
        if path.exists():
            tails.append(
                f"--- {path} (last lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:])
            )
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n" + "\n".join(tails))


class Layout:
    """Every path of one cluster's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pids = root / "pids"
        self.logs = root / "logs"
        self.pki = root / "pki"
        self.etcd_data = root / "etcd"
        self.containerd = root / "containerd"
        self.containerd_sock = root / "containerd" / "containerd.sock"
        self.cni_conf = root / "cni" / "net.d"
        self.cni_ipam = root / "cni" / "ipam"
        self.kubelet = root / "kubelet"
        self.volumes = root / "volumes"
        self.fake_sysctl = root / "node" / "fake-sysctl"
        self.ns_ready = root / "node" / "ns.ready"
        self.host_before = root / "host-before.json"
        self.kubeconfig = root / "kubeconfig"
        self.admin_token = root / "pki" / "admin.token"

    def pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# --------------------------------------------------------------------------- binaries and checks


def k8s_binary(name: str) -> Path:
    return CACHE / "k8s" / K8S_VERSION / name


def coredns_binary() -> Path:
    return CACHE / "coredns" / COREDNS_VERSION / "coredns"


def image_tars() -> list[Path]:
    """The image archives to load: ``hack/build-images.sh`` prints them (building what its cache
    lacks), or ``MOORAGE_CLUSTER_IMAGES`` lists them (colon-separated paths)."""
    given = os.environ.get("MOORAGE_CLUSTER_IMAGES")
    if given:
        return [Path(p) for p in given.split(":") if p]
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "build-images.sh")], text=True, stdout=subprocess.PIPE, stderr=None
    )
    if proc.returncode != 0:
        raise ClusterError(f"building the images failed (see above): {IMAGES_HINT}")
    return [Path(line.strip()) for line in proc.stdout.splitlines() if line.strip().endswith(".tar")]


def preflight() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the local cluster needs root (containerd, a bridge, iptables): run it with sudo")
    missing = [
        p
        for p in DEBIAN_PACKAGES
        if "install ok installed" not in run(["dpkg-query", "-W", "-f=${Status}", p], check=False)
    ]
    if missing:
        raise ClusterError(
            f"missing Debian packages: {' '.join(missing)} (`make cluster-deps` installs them)"
        )
    needed = [
        k8s_binary(b)
        for b in (
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
        )
    ] + [coredns_binary()]
    absent = [str(p) for p in needed if not os.access(p, os.X_OK)]
    if absent:
        raise ClusterError(
            "binaries not built: "
            + ", ".join(absent)
            + " (`make control-plane coredns` builds them from the Go module proxy)"
        )


# --------------------------------------------------------------------------- processes


def alive(layout: Layout, name: str) -> int | None:
    pidfile = layout.pidfile(name)
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A recycled PID is not ours: the start time recorded beside it must match.
    recorded = pidfile.read_text().split()[1:2]
    if recorded and recorded[0] != _start_time(pid):
        return None
    return pid


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def start(
    layout: Layout,
    name: str,
    cmd: list[str],
    *,
    namespace_pid: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    if namespace_pid is not None:
        cmd = ["nsenter", "-t", str(namespace_pid), "-m", "--", *cmd]
    logfile = layout.logfile(name)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    layout.pidfile(name).write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc.pid


def stop(layout: Layout, name: str, timeout: float = 20.0) -> None:
    pid = alive(layout, name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        log(f"stopped {name} (pid {pid})")
    layout.pidfile(name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- certificates


def openssl(*args: str) -> None:
    run(["openssl", *args])


def make_pki(layout: Layout) -> None:
    pki = layout.pki
    if (pki / "ca.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=moorage-local-ca",
        "-keyout",
        str(pki / "ca.key"),
        "-out",
        str(pki / "ca.crt"),
    )
    sans = ",".join(
        [
            f"IP:{GATEWAY}",
            f"IP:{SERVICE_API_IP}",
            "IP:127.0.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}",
        ]
    )
    _signed(pki, "apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}")
    # The apiserver's client certificate towards the kubelet (logs, exec, port-forward).
    _signed(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", None)
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    token = secrets.token_hex(24)
    layout.admin_token.write_text(token)
    (pki / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    for path in pki.iterdir():
        os.chmod(path, 0o600)


def _signed(pki: Path, name: str, subject: str, extension: str | None) -> None:
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        str(pki / f"{name}.key"),
        "-out",
        str(pki / f"{name}.csr"),
    )
    args = [
        "x509",
        "-req",
        "-in",
        str(pki / f"{name}.csr"),
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-days",
        "3650",
        "-out",
        str(pki / f"{name}.crt"),
    ]
    if extension:
        ext = pki / f"{name}.ext"
        ext.write_text(extension + "\n")
        args += ["-extfile", str(ext)]
    openssl(*args)


def write_kubeconfig(layout: Layout) -> None:
    ca = base64.b64encode((layout.pki / "ca.crt").read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "moorage-local",
                "cluster": {
                    "server": f"https://{GATEWAY}:{APISERVER_PORT}",
                    "certificate-authority-data": ca,
                },
            }
        ],
        "users": [{"name": "admin", "user": {"token": layout.admin_token.read_text().strip()}}],
        "contexts": [{"name": "moorage-local", "context": {"cluster": "moorage-local", "user": "admin"}}],
        "current-context": "moorage-local",
    }
    layout.kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(layout.kubeconfig, 0o600)


def api_get(layout: Layout, path: str) -> dict:
    context = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    request = urllib.request.Request(
        f"https://{GATEWAY}:{APISERVER_PORT}{path}",
        headers={"Authorization": f"Bearer {layout.admin_token.read_text().strip()}"},
    )
    with urllib.request.urlopen(request, context=context, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body.startswith(b"{") else {"raw": body.decode()}


# --------------------------------------------------------------------------- configs


def containerd_config(layout: Layout) -> str:
    return f"""\
version = 2
root = "{layout.containerd}/root"
state = "{layout.containerd}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{layout.containerd_sock}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/moorage/pause:3.10"
  # The pod sandbox has no CAP_SYS_RESOURCE here: runc could not lower oom_score_adj and failed.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


def cni_config(layout: Layout) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "moorage-local",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # pods talk to this machine only: nothing to masquerade out
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_ipam),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: Layout) -> str:
    pki = layout.pki
    return f"""\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://{layout.containerd_sock}
imageServiceEndpoint: unix://{layout.containerd_sock}
failSwapOn: false
address: {GATEWAY}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki}/ca.crt}}
authorization:
  mode: Webhook
makeIPTablesUtilChains: false
podLogsDir: {layout.kubelet}/pod-logs
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "3%"
  imagefs.available: "3%"
imageGCHighThresholdPercent: 100
oomScoreAdj: 0
clusterDomain: {CLUSTER_DOMAIN}
clusterDNS: [{GATEWAY}]
volumePluginDir: {layout.kubelet}/volume-plugins
maxPods: 250
"""


def kube_proxy_config(layout: Layout) -> str:
    return f"""\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {layout.kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Pods share one bridge: without br_netfilter a reply from a Service's pod would bypass the host's
# NAT. Masquerading every Service connection sends replies back through the host instead, so no
# host sysctl (bridge-nf-call-iptables) is needed.
iptables:
  masqueradeAll: true
  localhostNodePorts: false
nodePortAddresses: ["{GATEWAY}/32"]
# Zeros: kube-proxy leaves the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""


COREFILE = f"""\
{CLUSTER_DOMAIN}:53 {{
    bind {GATEWAY}
    errors
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig KUBECONFIG moorage-local
        pods insecure
    }}
    cache 5
}}
"""

NS_HOLDER = """\
#!/bin/sh
# Holds the cluster's private mount namespace. The kubelet insists on vm.overcommit_memory=1,
# kernel.panic=10 and kernel.panic_on_oops=1 and writes them host-wide unless they already read so;
# inside this namespace they read so (bind-mounted files), and the host's values never change.
set -e
F="$1"
echo 1 > "$F/overcommit_memory"; echo 10 > "$F/panic"; echo 1 > "$F/panic_on_oops"
mount --bind "$F/overcommit_memory" /proc/sys/vm/overcommit_memory
mount --bind "$F/panic" /proc/sys/kernel/panic
mount --bind "$F/panic_on_oops" /proc/sys/kernel/panic_on_oops
echo ready > "$2"
exec sleep infinity
"""


# --------------------------------------------------------------------------- up


def up(layout: Layout, python: str, install_operator: bool) -> None:
    preflight()
    if alive(layout, "kube-apiserver") and alive(layout, "kubelet"):
        log(f"already running; KUBECONFIG={layout.kubeconfig}")
        return
    if layout.root.exists() and any(layout.pids.glob("*.pid")):
        log("a previous cluster left processes or state behind: taking it down first")
        down(layout)
    t0 = time.monotonic()
    for d in (
        layout.pids,
        layout.logs,
        layout.containerd,
        layout.cni_conf,
        layout.cni_ipam,
        layout.kubelet / "pod-logs",
        layout.kubelet / "volume-plugins",
        layout.kubelet / "root",
        layout.volumes,
        layout.fake_sysctl,
    ):
        d.mkdir(parents=True, exist_ok=True)
    record_host(layout)
    bridge_up()
    holder = start_namespace_holder(layout)

    (layout.containerd / "config.toml").write_text(containerd_config(layout))
    (layout.cni_conf / "10-moorage-local.conflist").write_text(json.dumps(cni_config(layout), indent=2))
    start(
        layout,
        "containerd",
        ["containerd", "--config", str(layout.containerd / "config.toml")],
        namespace_pid=holder,
    )
    ctr = ctr_command(layout)
    wait_for(
        "containerd",
        lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0,
        30,
        [layout.logfile("containerd")],
    )
    load_images(layout)

    make_pki(layout)
    write_kubeconfig(layout)
    start_control_plane(layout)
    start_coredns(layout)
    start_kubelet(layout, holder)
    (layout.root / "kube-proxy.yaml").write_text(kube_proxy_config(layout))
    start(
        layout,
        "kube-proxy",
        [str(k8s_binary("kube-proxy")), f"--config={layout.root / 'kube-proxy.yaml'}", "--v=1"],
        namespace_pid=holder,
    )
    wait_for(
        "kube-proxy",
        lambda: urllib.request.urlopen("http://127.0.0.1:10256/healthz", timeout=2).status == 200,
        60,
        [layout.logfile("kube-proxy")],
    )
    log("kube-proxy serving the service CIDR")
    start(
        layout,
        "provisioner",
        [
            python,
            str(HERE / "provisioner.py"),
            "--kubeconfig",
            str(layout.kubeconfig),
            "--root",
            str(layout.volumes),
            "--storage-class",
            STORAGE_CLASS,
            "--node",
            NODE_NAME,
        ],
    )
    wait_for(
        "the default StorageClass",
        lambda: bool(api_get(layout, f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}")),
        30,
        [layout.logfile("provisioner")],
    )
    log(f"volume provisioner running (StorageClass {STORAGE_CLASS}, volumes in {layout.volumes})")
    if install_operator:
        install_moorage(layout)
    log(f"up in {time.monotonic() - t0:.1f}s")
    print(f"\nexport KUBECONFIG={layout.kubeconfig}\n")


def record_host(layout: Layout) -> None:
    if layout.host_before.exists():
        return
    before = {
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "existed": [p for p in FIXED_HOST_PATHS if os.path.exists(p)],
        "kube_chains": {tool: sorted(_kube_chains(tool)) for tool in IPTABLES},
    }
    layout.host_before.write_text(json.dumps(before))


IPTABLES = ("iptables", "ip6tables")


def _kube_chains(tool: str) -> set[str]:
    """``table/chain`` of every KUBE-* chain in the host's ruleset."""
    out = run([f"{tool}-save"], check=False)
    chains, table = set(), ""
    for line in out.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":KUBE-"):
            chains.add(f"{table}/{line[1:].split()[0]}")
    return chains


def remove_kube_chains(before: dict[str, list[str]]) -> None:
    """kube-proxy --cleanup leaves a few chains (KUBE-FIREWALL, jumped to from INPUT and OUTPUT):
    every KUBE-* chain that was not there before the first `up` goes, with the rules jumping to it."""
    for tool in IPTABLES:
        ours = _kube_chains(tool) - set(before.get(tool, []))
        if not ours:
            continue
        table = ""
        for line in run([f"{tool}-save"], check=False).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and any(
                f"-j {c.split('/')[1]}" in line for c in ours if c.startswith(table + "/")
            ):
                subprocess.run([tool, "-t", table, "-D", *shlex.split(line[3:])], capture_output=True)
        for chain in ours:
            table, name = chain.split("/")
            subprocess.run([tool, "-t", table, "-F", name], capture_output=True)
        for chain in ours:
            table, name = chain.split("/")
            subprocess.run([tool, "-t", table, "-X", name], capture_output=True)
        log(f"removed {tool} chains: {', '.join(sorted(ours))}")


def bridge_up() -> None:
    # Made before the CNI plugin runs so the kubelet, the apiserver and CoreDNS can bind the
    # gateway address; the bridge plugin adopts it.
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    # Routing between pods and Services through the host needs forwarding; `down` restores the
    # value recorded before the first `up`.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    log(f"bridge {BRIDGE} {GATEWAY}/16")


def start_namespace_holder(layout: Layout) -> int:
    script = layout.root / "node" / "ns-holder.sh"
    script.write_text(NS_HOLDER)
    script.chmod(0o755)
    layout.ns_ready.unlink(missing_ok=True)
    pid = start(
        layout,
        "ns-holder",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            str(script),
            str(layout.fake_sysctl),
            str(layout.ns_ready),
        ],
    )
    wait_for("the mount namespace", layout.ns_ready.exists, 10, [layout.logfile("ns-holder")])
    return pid


def ctr_command(layout: Layout) -> list[str]:
    return ["ctr", "-a", str(layout.containerd_sock), "-n", "k8s.io"]


def load_images(layout: Layout) -> None:
    tars = image_tars()
    if not any("pause" in t.name for t in tars):
        raise ClusterError(f"no pause image built: {IMAGES_HINT}")
    for tar in tars:
        run([*ctr_command(layout), "images", "import", "--no-unpack", str(tar)])
    names = [
        line.split()[0]
        for line in run([*ctr_command(layout), "images", "ls"]).splitlines()[1:]
        if line.startswith("localhost/")
    ]
    log(f"images imported: {' '.join(names)}")


def start_control_plane(layout: Layout) -> None:
    pki = layout.pki
    start(
        layout,
        "etcd",
        [
            str(k8s_binary("etcd")),
            "--name=default",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT}",
            f"--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER}",
            f"--initial-cluster=default=http://127.0.0.1:{ETCD_PEER}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            f"--listen-metrics-urls=http://127.0.0.1:{ETCD_METRICS}",
        ],
    )
    start(
        layout,
        "kube-apiserver",
        [
            str(k8s_binary("kube-apiserver")),
            f"--bind-address={GATEWAY}",
            f"--advertise-address={GATEWAY}",
            f"--secure-port={APISERVER_PORT}",
            f"--cert-dir={layout.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki}/apiserver.crt",
            f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt",
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT}",
            f"--token-auth-file={pki}/tokens.csv",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
        ],
    )
    wait_for(
        "kube-apiserver /readyz",
        lambda: api_get(layout, "/readyz").get("raw") == "ok",
        180,
        [layout.logfile("etcd"), layout.logfile("kube-apiserver")],
    )
    log("kube-apiserver ready")
    common = [
        f"--kubeconfig={layout.kubeconfig}",
        f"--authentication-kubeconfig={layout.kubeconfig}",
        f"--authorization-kubeconfig={layout.kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]
    start(
        layout,
        "kube-controller-manager",
        [
            str(k8s_binary("kube-controller-manager")),
            *common,
            "--secure-port=10257",
            f"--cert-dir={layout.root / 'cm-certs'}",
            "--controllers=*,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller",
            f"--service-account-private-key-file={pki}/sa.key",
            f"--root-ca-file={pki}/ca.crt",
            f"--cluster-signing-cert-file={pki}/ca.crt",
            f"--cluster-signing-key-file={pki}/ca.key",
            f"--flex-volume-plugin-dir={layout.kubelet / 'volume-plugins'}",
            "--use-service-account-credentials=true",
        ],
    )
    start(layout, "kube-scheduler", [str(k8s_binary("kube-scheduler")), *common, "--secure-port=10259"])


def start_coredns(layout: Layout) -> None:
    corefile = layout.root / "Corefile"
    corefile.write_text(COREFILE.replace("KUBECONFIG", str(layout.kubeconfig)))
    start(layout, "coredns", [str(coredns_binary()), "-conf", str(corefile)], cwd=layout.root)


def start_kubelet(layout: Layout, holder: int) -> None:
    (layout.kubelet / "config.yaml").write_text(kubelet_config(layout))
    start(
        layout,
        "kubelet",
        [
            str(k8s_binary("kubelet")),
            f"--config={layout.kubelet / 'config.yaml'}",
            f"--root-dir={layout.kubelet / 'root'}",
            f"--cert-dir={layout.kubelet / 'pki'}",
            f"--kubeconfig={layout.kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={GATEWAY}",
            "--v=1",
        ],
        namespace_pid=holder,
    )

    def node_ready() -> bool:
        node = api_get(layout, f"/api/v1/nodes/{NODE_NAME}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])

    wait_for(f"node {NODE_NAME} Ready", node_ready, 120, [layout.logfile("kubelet")])
    log(f"node {NODE_NAME} Ready")
    wait_for(
        "the default ServiceAccount",
        lambda: bool(api_get(layout, "/api/v1/namespaces/default/serviceaccounts/default")),
        60,
        [layout.logfile("kube-controller-manager")],
    )


def kubectl(layout: Layout, *args: str, stdin: str | None = None) -> str:
    return run(["kubectl", f"--kubeconfig={layout.kubeconfig}", *args], input=stdin)


def install_moorage(layout: Layout) -> None:
    """The operator from its image with deploy/'s RBAC, and the catalog mapping to local images."""
    kubectl(layout, "apply", "--server-side", "-k", str(HERE / "deploy"))
    kubectl(layout, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    kubectl(layout, "apply", "--server-side", "-f", str(HERE / "deploy" / "catalog.yaml"))
    kubectl(
        layout, "-n", "moorage-system", "rollout", "status", "deployment/moorage-operator", "--timeout=180s"
    )
    log("moorage operator running (hack/cluster/deploy)")


def reload(layout: Layout) -> None:
    """After a code change: the images again (only changed ones are rebuilt), deploy/ applied again
    (CRDs, RBAC), the operator restarted."""
    if not alive(layout, "containerd"):
        raise ClusterError(f"no cluster is running in {layout.root}: `make cluster-up`")
    load_images(layout)
    # A change may have touched the CRDs (a new status field is pruned by the old schema) or RBAC.
    kubectl(layout, "apply", "--server-side", "-k", str(HERE / "deploy"))
    kubectl(layout, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    kubectl(layout, "-n", "moorage-system", "rollout", "restart", "deployment/moorage-operator")
    kubectl(
        layout, "-n", "moorage-system", "rollout", "status", "deployment/moorage-operator", "--timeout=180s"
    )
    log("operator restarted on the current image")


# --------------------------------------------------------------------------- down


def down(layout: Layout) -> None:
    if not layout.root.exists():
        log(f"nothing to do: {layout.root} does not exist")
        return
    ctr = ctr_command(layout)
    stop(layout, "provisioner")
    stop(layout, "kubelet")
    if alive(layout, "containerd"):
        # Killing every container ends its network namespace, and the veth with it.
        for task in run([*ctr, "tasks", "ls", "-q"], check=False).split():
            subprocess.run([*ctr, "tasks", "kill", "-s", "KILL", task], capture_output=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and run([*ctr, "tasks", "ls", "-q"], check=False).strip():
            time.sleep(0.5)
    stop(layout, "kube-proxy")
    if os.access(k8s_binary("kube-proxy"), os.X_OK):
        # Removes every KUBE-* chain and the jumps to them: the host's iptables as before.
        subprocess.run([str(k8s_binary("kube-proxy")), "--cleanup", "--v=0"], capture_output=True)
    for name in (
        "coredns",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
        "containerd",
    ):
        stop(layout, name)
    for pid in run(
        ["pgrep", "-f", f"containerd-shim-runc-v2 .*-address {layout.containerd_sock}"], check=False
    ).split():
        os.kill(int(pid), signal.SIGKILL)
        log(f"stopped containerd shim {pid}")
    stop(layout, "ns-holder")  # every mount of the private namespace goes with it
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
        run(["ip", "link", "del", BRIDGE])
        log(f"deleted bridge {BRIDGE}")
    if layout.host_before.exists():
        before = json.loads(layout.host_before.read_text())
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before["ip_forward"] + "\n")
        remove_kube_chains(before.get("kube_chains", {}))
        for path in FIXED_HOST_PATHS:
            if path not in before["existed"] and os.path.exists(path):
                _unmount_under(path)
                shutil.rmtree(path, ignore_errors=True)
                log(f"removed {path}")
    for cgroup in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for directory in sorted(cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir():
                subprocess.run(["rmdir", str(directory)], capture_output=True)
        subprocess.run(["rmdir", str(cgroup)], capture_output=True)
    _unmount_under(str(layout.root))
    shutil.rmtree(layout.root, ignore_errors=True)
    log(
        f"down: removed {layout.root}; ip_forward={Path('/proc/sys/net/ipv4/ip_forward').read_text().strip()}"
    )


def _unmount_under(prefix: str) -> None:
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["up", "down", "status", "reload"],
        help="reload: rebuild and import the images, restart the operator (after a code change)",
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    parser.add_argument(
        "--python",
        default=str(REPO / ".venv" / "bin" / "python"),
        help="Python with the `kubernetes` client, for the volume provisioner",
    )
    parser.add_argument("--no-operator", action="store_true", help="do not install the Moorage operator")
    args = parser.parse_args(argv)
    layout = Layout(args.state_dir)
    try:
        if args.command == "up":
            up(layout, args.python, install_operator=not args.no_operator)
        elif args.command == "down":
            down(layout)
        elif args.command == "reload":
            reload(layout)
        else:
            for name in sorted(p.stem for p in layout.pids.glob("*.pid")) if layout.pids.exists() else []:
                pid = alive(layout, name)
                print(f"{name:26} " + (f"running pid {pid}" if pid else "stopped"))
    except ClusterError as error:
        print(f"cluster {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
