"""deploy/kubernetes renders with ``kubectl kustomize`` and validates with ``kubernetes-validate``; the
properties the gate relies on (isolation of the signer, non-root, probes, one audit chain) hold.

kubectl comes from Debian (scripts/bootstrap.sh installs it when run as root) and kubernetes-validate from
the dev extras; each test that needs one skips with a message where it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kubernetes"
# The Kubernetes release whose schemas the manifests are checked against: the oldest still maintained
# upstream when this was written, so the base works on clusters that are not the newest.
K8S_VERSION = "1.32"


@cache
def rendered() -> list[dict[str, Any]]:
    """The base as ``kubectl kustomize`` renders it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed (apt-get install kubernetes-client, or run scripts/bootstrap.sh)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0 and "unknown command" in done.stderr:
        pytest.skip(f"this kubectl has no kustomize: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def one(kind: str) -> dict[str, Any]:
    """The single rendered resource of ``kind``."""
    (found,) = [d for d in rendered() if d["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    """The Deployment's pod spec."""
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    """The container or init container called ``name``."""
    spec = pod_spec()
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    result: dict[str, Any] = found
    return result


def mounts(name: str) -> set[str]:
    """The names of the volumes container ``name`` mounts."""
    return {m["name"] for m in container(name).get("volumeMounts", [])}


def test_the_base_renders_every_expected_resource() -> None:
    kinds = sorted(d["kind"] for d in rendered())
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_every_builtin_resource_validates_strictly() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]')"
    )
    checked = 0
    for doc in rendered():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships with the validator (checked by hand below)
        kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError with the offending path
        checked += 1
    assert checked == len(rendered()) - 1


def test_a_broken_manifest_is_caught_by_the_validator() -> None:
    # The validator is not a rubber stamp: a typo in a field name fails strict validation.
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    bad = yaml.safe_load(yaml.safe_dump(one("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_the_signer_is_a_sidecar_sharing_only_the_socket() -> None:
    spec = pod_spec()
    assert [c["name"] for c in spec["containers"]] == ["signer", "bot"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    shared = mounts("bot") & mounts("signer")
    # The policy is read by both (each checks it); tmp is each container's scratch space, empty and private
    # in purpose. The socket volume is the one channel between them.
    assert shared == {"socket", "policy", "tmp"}
    assert "emptyDir" in volumes["socket"]
    assert mounts("bot").isdisjoint({"keys", "signer-secrets", "audit"})
    assert {"keys", "signer-secrets", "audit"} <= mounts("signer")
    assert "persistentVolumeClaim" in volumes["audit"]  # the audit chain outlives the pod
    assert volumes["keys"]["emptyDir"]["medium"] == "Memory"  # the private key never touches a disk
    bot_env = {e["name"] for e in container("bot").get("env", [])}
    assert not any("SIGNING_SECRET" in n or "CI_SECRET" in n or "KEYSET" in n for n in bot_env)
    secret_refs = [s["secretRef"]["name"] for s in container("bot")["envFrom"] if "secretRef" in s]
    assert secret_refs == ["keyturn-bot"]
    bot_secret = next(
        d for d in rendered() if d["kind"] == "Secret" and d["metadata"]["name"] == "keyturn-bot"
    )
    assert set(bot_secret["stringData"]) == {"KEYTURN_SLACK_BOT_TOKEN"}
    signer_env = {e["name"]: e["value"] for e in container("signer")["env"]}
    assert signer_env["KEYTURN_SIGNER_SOCKET"].startswith("/run/keyturn/")
    assert signer_env["KEYTURN_AUDIT_LOG"].startswith("/audit/")


@pytest.mark.parametrize("name", ["signer", "bot", "keyset"])
def test_every_container_is_locked_down(name: str) -> None:
    ctx = container(name)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["runAsUser"] >= 10000
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    assert pod_spec()["automountServiceAccountToken"] is False


def test_the_bot_and_the_signer_run_as_different_users() -> None:
    assert (
        container("bot")["securityContext"]["runAsUser"]
        != container("signer")["securityContext"]["runAsUser"]
    )
    # The socket is shared through the pod's group: the signer makes it 0660 with that group.
    group = str(pod_spec()["securityContext"]["fsGroup"])
    assert {"name": "KEYTURN_SIGNER_SOCKET_GROUP", "value": group} in container("signer")["env"]


def test_probes_use_healthz_for_liveness_and_readyz_for_readiness() -> None:
    bot = container("bot")
    assert bot["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bot["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert bot["livenessProbe"]["httpGet"]["port"] == "http"
    assert "startupProbe" in container("signer")


def test_one_replica_recreated_and_a_budget_that_keeps_it() -> None:
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two signers on one audit log
    pdb = one("PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_service_monitor_scrapes_the_service_metrics_port() -> None:
    monitor = one("ServiceMonitor")
    service = one("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (
        service["spec"]["selector"].items()
        <= one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_policy_copy_is_the_example_policy() -> None:
    # kustomize reads no file outside its folder, so the base carries a copy: it must not drift.
    assert (BASE / "keyturn.toml").read_text() == (ROOT / "deploy" / "keyturn.example.toml").read_text()
