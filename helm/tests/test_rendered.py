"""The rendered chart: what a cluster would run. Renders offline through helm/render.py."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import sys
import tomllib

import helm_python as helm
import pytest
import yaml

HELM = pathlib.Path(__file__).resolve().parents[1]
ROOT = HELM.parent
sys.path.insert(0, str(HELM))
import render  # noqa: E402

VALUE_SETS = ["default", "values-minimal", "values-certificate", "values-all"]
# Two replicas on Redis: not in VALUE_SETS, whose /data tests are about the one-replica claim.
REPLICAS = "values-replicas"


def values_of(name: str) -> dict:
    return {} if name == "default" else render.load_values([str(HELM / "ci" / f"{name}.yaml")])


def objects(values: dict) -> list[dict]:
    return render.objects(render.render(values))


def pod(values: dict) -> tuple[dict, dict]:
    """The Deployment's pod spec and its one container."""
    spec = render.find(objects(values), "Deployment")["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return spec, spec["containers"][0]


@pytest.mark.parametrize("name", [*VALUE_SETS, REPLICAS])
def test_the_pod_runs_non_root_read_only_without_privileges(name):
    spec, container = pod(values_of(name))
    for ctx in (spec["securityContext"], container["securityContext"]):
        assert ctx["runAsNonRoot"] is True
        assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container["securityContext"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"]
    assert not c["capabilities"].get("add")
    assert c.get("privileged", False) is False
    # The image's USER is the same numeric user, so files it created stay writable.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {c['runAsUser']}:{c['runAsGroup']}" in dockerfile


@pytest.mark.parametrize("name", VALUE_SETS)
def test_liveness_is_healthz_and_readiness_is_readyz_on_the_served_port(name):
    _, container = pod(values_of(name))
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    listen = tomllib.loads(render.gateway_toml(objects(values_of(name))))["server"]["listen"]
    assert listen == f"0.0.0.0:{ports['http']}"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_data_is_a_writable_volume_holding_the_trail_and_the_sessions(name):
    values = values_of(name)
    spec, container = pod(values)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/data" in mounts and not mounts["/data"].get("readOnly", False)
    volume = next(v for v in spec["volumes"] if v["name"] == mounts["/data"]["name"])
    objs = objects(values)
    claims = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    if name == "values-certificate":  # an existing claim
        assert volume["persistentVolumeClaim"]["claimName"] == "sync-gateway-audit" and not claims
    else:
        assert volume["persistentVolumeClaim"]["claimName"] == claims[0]["metadata"]["name"]
        assert claims[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    config = tomllib.loads(render.gateway_toml(objs))
    if "path" in config["audit"]:
        assert config["audit"]["path"].startswith("/data/")
    on_redis = config.get("state", {}).get("backend") == "redis"
    for identity in config.get("identities", {}).values():
        if identity.get("kind") == "application":
            continue
        if on_redis:  # the session lives in Redis: no file
            assert "store_path" not in identity
        else:
            assert identity["store_path"].startswith("/data/")
    # One writer of /data at a time.
    assert render.find(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def checksum(values: dict) -> str:
    d = render.find(objects(values), "Deployment")
    return d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_the_checksum_annotation_is_the_configmaps_and_rolls_the_pod_on_a_change():
    rendered = render.render({})
    cm_text = next(t for p, t in rendered.items() if p.endswith("/configmap.yaml"))
    assert checksum({}) == hashlib.sha256(cm_text.encode()).hexdigest()
    changed = {"config": {"actions": {"sync": {"cooldown_seconds": 0}}}}
    assert checksum(changed) != checksum({})
    assert checksum({"resources": {"requests": {"cpu": "200m"}}}) == checksum({})


def render_unschemed(tmp_path, values: dict) -> dict[str, str]:
    """`helm template --skip-schema-validation`: the templates' own guards alone."""
    unschemed = tmp_path / "sync-gateway"
    shutil.copytree(render.CHART, unschemed)
    (unschemed / "values.schema.json").unlink()
    with helm.Chart.load(str(unschemed)) as chart:
        return chart.render(values, name=render.RELEASE)



def without(values: dict, *path: str) -> dict:
    """A deep copy of values with the key at path removed."""
    out = yaml.safe_load(yaml.safe_dump(values))
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def test_two_replicas_on_the_memory_backend_are_refused_with_the_reason(tmp_path):
    reason = "replicaCount above 1 needs config.state.backend = redis"
    with pytest.raises(helm.HelmValuesError) as e:
        render.render({"replicaCount": 2})
    assert reason in str(e.value), str(e.value)
    assert reason in " ".join(render.lint({"replicaCount": 2}))
    memory = without(values_of(REPLICAS), "config", "state", "backend")
    with pytest.raises(helm.HelmValuesError, match=reason):
        render.render(memory)
    # And without the schema (helm --skip-schema-validation), the template refuses it too.
    with pytest.raises(helm.HelmRenderError, match=reason):
        render_unschemed(tmp_path, memory)


def test_two_replicas_without_the_state_encryption_key_are_refused(tmp_path):
    reason = "replicaCount above 1 needs secrets.stateEncryptionKey.existingSecret"
    keyless = without(values_of(REPLICAS), "secrets", "stateEncryptionKey")
    with pytest.raises(helm.HelmValuesError, match=reason):
        render.render(keyless)
    with pytest.raises(helm.HelmRenderError, match=reason):
        render_unschemed(tmp_path, keyless)


def test_two_replicas_with_a_read_write_once_claim_are_refused():
    values = values_of(REPLICAS)
    values["persistence"] = {"enabled": True}
    with pytest.raises(helm.HelmRenderError, match="ReadWriteOnce claim cannot follow the replicas"):
        render.render(values)
    values["persistence"]["accessModes"] = ["ReadWriteMany"]
    assert render.find(objects(values), "Deployment")["spec"]["replicas"] == 2


def test_two_replicas_on_redis_read_the_url_from_its_secret_and_their_id_from_the_pod_name():
    _, container = pod(values_of(REPLICAS))
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["SYNC_GATEWAY__STATE__REDIS_URL"] == {"secretKeyRef": {"name": "sync-gateway-redis", "key": "url"}}
    assert env["SYNC_GATEWAY__STATE__REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    config = tomllib.loads(render.gateway_toml(objects(values_of(REPLICAS))))
    assert config["state"]["backend"] == "redis"
    assert "redis_url" not in config["state"] and "replica_id" not in config["state"]


def test_on_redis_a_delegated_identity_names_its_key_but_no_session_file():
    values = values_of(REPLICAS)
    identity = tomllib.loads(render.gateway_toml(objects(values)))["identities"]["webhook"]
    assert "store_path" not in identity
    assert identity["store_key_file"].endswith("/identities/webhook.key")
    # The same identity on the memory backend keeps its session in /data.
    one = without(values, "secrets", "stateEncryptionKey")
    one["replicaCount"] = 1
    one["config"]["state"]["backend"] = "memory"
    identity = tomllib.loads(render.gateway_toml(objects(one)))["identities"]["webhook"]
    assert identity["store_path"] == "/data/webhook.session"


def test_two_replicas_mount_the_state_encryption_key_the_config_names():
    values = values_of(REPLICAS)
    spec, container = pod(values)
    path = tomllib.loads(render.gateway_toml(objects(values)))["state"]["encryption_key_file"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    volume = next(v for v in spec["volumes"] if v["name"] == "secrets")
    items = {
        f"{mount['mountPath']}/{item['path']}": (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert items[path] == ("sync-gateway-state-key", "encryption-key")
    # Without the Secret the key is not named (a single replica on redis may go without it).
    one = without(values, "secrets", "stateEncryptionKey")
    one["replicaCount"] = 1
    assert "encryption_key_file" not in tomllib.loads(render.gateway_toml(objects(one)))["state"]


def test_two_replicas_get_a_disruption_budget_over_their_pods_and_a_rolling_update():
    objs = objects(values_of(REPLICAS))
    deployment = render.find(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    budget = render.find(objs, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["minAvailable"] == 1 and "maxUnavailable" not in budget["spec"]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("budget, spec", [
    ({"minAvailable": 2}, {"minAvailable": 2}),
    ({"minAvailable": "50%"}, {"minAvailable": "50%"}),
    ({"maxUnavailable": 1}, {"maxUnavailable": 1}),
])
def test_the_disruption_budget_takes_min_available_or_max_unavailable(budget, spec):
    values = values_of(REPLICAS)
    values["podDisruptionBudget"] = budget
    got = render.find(objects(values), "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in got.items() if k != "selector"} == spec


@pytest.mark.parametrize("replicas", [0, 1])
def test_one_replica_renders_no_disruption_budget_and_recreates(replicas):
    objs = objects({"replicaCount": replicas})
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert render.find(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("name", [*VALUE_SETS, REPLICAS])
def test_no_secret_is_created_or_written_into_the_configmap(name):
    objs = objects(values_of(name))
    assert not [o for o in objs if o["kind"] == "Secret"]
    config = tomllib.loads(render.gateway_toml(objs))
    assert "client_secret" not in config["entra"]
    assert "hmac_key" not in config["audit"] and "postgres_url" not in config["audit"]
    assert all("store_key" not in i for i in config.get("identities", {}).values())
    assert all("secrets" not in h for h in config.get("hooks", {}).values())
    _, container = pod(values_of(name))
    for env in container.get("env", []):
        assert "value" not in env or not env["name"].startswith("SYNC_GATEWAY__"), env


@pytest.mark.parametrize("secret", ["client_secret", "hmac_key", "postgres_url", "store_key"])
def test_a_secret_value_in_the_config_values_is_refused(secret):
    section = {"client_secret": "entra", "store_key": "entra"}.get(secret, "audit")
    with pytest.raises(helm.HelmValuesError, match=secret):
        render.render({"config": {section: {secret: "s3cret"}}})


@pytest.mark.parametrize("name", ["values-minimal", "values-certificate", "values-all", REPLICAS])
def test_every_file_the_config_names_is_mounted_from_a_secret(name):
    spec, container = pod(values_of(name))
    config = tomllib.loads(render.gateway_toml(objects(values_of(name))))
    named = [v for s in config.values() for k, v in s.items() if k.endswith("_file")]
    named += [i["store_key_file"] for i in config.get("identities", {}).values() if i.get("kind") != "application"]
    named += [h["secrets_file"] for h in config.get("hooks", {}).values() if "secrets_file" in h]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == "secrets")
    provided = {
        f"{mount['mountPath']}/{item['path']}"
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert named and set(named) <= provided, (named, provided)


def test_the_postgres_url_comes_from_a_secret_key_ref():
    _, container = pod(values_of("values-all"))
    env = {e["name"]: e for e in container["env"]}
    ref = env["SYNC_GATEWAY__AUDIT__POSTGRES_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "sync-gateway-audit-db", "key": "url"}
    with pytest.raises(helm.HelmRenderError, match="secrets.postgresUrl"):
        render.render({"config": {"audit": {"sinks": ["postgres"]}}})


def test_workload_identity_labels_the_pod_and_annotates_the_service_account():
    objs = objects(values_of("values-all"))
    labels = render.find(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    sa = render.find(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "22222222-2222-2222-2222-222222222222"
    assert "azure.workload.identity/use" not in render.find(objects({}), "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_two_client_credentials_are_refused():
    with pytest.raises(helm.HelmRenderError, match="exactly one client credential"):
        render.render({
            "workloadIdentity": {"enabled": True, "clientId": "22222222-2222-2222-2222-222222222222"},
            "secrets": {"clientSecret": {"existingSecret": "s"}},
        })


def test_the_optional_objects_are_shaped_for_the_gateway():
    objs = objects(values_of("values-all"))
    policy = render.find(objs, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (5432, "TCP")} <= egress_ports
    monitor = render.find(objs, "ServiceMonitor")  # no bundled schema: checked here
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert monitor["spec"]["selector"]["matchLabels"] == render.find(objs, "Service")["spec"]["selector"]
    paths = [p["path"] for r in render.find(objs, "Ingress")["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/sync"]


def test_the_prometheus_rule_ships_the_alert_file_unrendered_and_only_when_enabled():
    assert not [o for o in objects({}) if o["kind"] == "PrometheusRule"]
    rule = render.find(objects(values_of("values-all")), "PrometheusRule")  # no bundled schema
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    shipped = yaml.safe_load((HELM / "sync-gateway" / "files" / "alerts.yaml").read_text())
    assert rule["spec"] == shipped
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"SyncGatewayAuditNotDurable", "SyncGatewayRunsFailing",
            "SyncGatewayEntraRefusesOwnCredential"} <= set(alerts)
    # Prometheus's own templates reach Prometheus: Helm did not render them.
    assert "{{ $labels.code }}" in alerts["SyncGatewayEntraRefusesOwnCredential"]["annotations"]["description"]


def raw_keys() -> dict[str, set[str]]:
    """The keys the gateway reads, from src/config/raw.rs's Raw* structs (section -> keys)."""
    src = (ROOT / "src" / "config" / "raw.rs").read_text()
    sections = {"RawServer": "server", "RawEntra": "entra", "RawCallers": "callers",
                "RawGraph": "graph", "RawLimits": "limits", "RawAudit": "audit",
                "RawSyncAction": "actions.sync", "RawIdentity": "identities", "RawHook": "hooks",
                "RawTelemetry": "telemetry",
                "RawState": "state"}
    out = {}
    for struct, section in sections.items():
        body = re.search(r"struct " + struct + r" \{(.*?)\n\}", src, re.S)
        assert body, f"src/config/raw.rs has no struct {struct}"
        out[section] = set(re.findall(r"^\s+(?:pub(?:\([\w:]+\))? )?(\w+): ", body.group(1), re.M))
    return out


# Keys the chart sets itself, or that must never be values (secrets).
CHART_SET = {
    # The chart's pods sit behind a Service (and an ingress or a mesh) that terminates TLS: it
    # renders plaintext_behind_proxy = true itself and does not offer server.tls.
    "server": {"listen", "plaintext_behind_proxy", "tls"},
    "entra": {"client_secret", "client_secret_file", "certificate_file", "private_key_file", "federated_token_file"},
    "audit": {"path", "postgres_url", "signing_key_file", "hmac_key", "hmac_key_file"},
    "identities": {"store_path", "store_key", "store_key_file"},
    # Signing secrets only ever come from a referenced Secret (secretsSecret), mounted as the file.
    "hooks": {"secrets", "secrets_file"},
    # The Redis URL may carry a password: only ever from secrets.redisUrl, as the environment;
    # the encryption key only as the file from secrets.stateEncryptionKey; the replica id is the
    # pod's name.
    "state": {"redis_url", "redis_url_file", "encryption_key", "encryption_key_file", "replica_id"},
}


def test_the_values_schema_covers_every_key_the_gateway_reads():
    with helm.Chart.load(str(render.CHART)) as chart:
        schema = chart.schema
    config = schema["properties"]["config"]["properties"]

    def keys(node):
        return set(node["properties"])

    offered = {s: keys(config[s]) for s in ("server", "entra", "callers", "graph", "limits", "audit", "telemetry", "state")}
    offered["actions.sync"] = keys(config["actions"]["properties"]["sync"])
    offered["identities"] = set(schema["properties"]["identities"]["additionalProperties"]["properties"]) - {"storeKeySecret"}
    offered["hooks"] = set(schema["properties"]["hooks"]["additionalProperties"]["properties"]) - {"secretsSecret"}
    for section, read in raw_keys().items():
        missing = read - offered[section] - CHART_SET.get(section, set())
        assert not missing, (
            f"{section}: the gateway reads {sorted(missing)} but the chart offers no value for it: add it to "
            "values.schema.json and to the key list in templates/configmap.yaml"
        )
        unknown = offered[section] - read
        assert not unknown, f"{section}: the chart offers {sorted(unknown)}, which the gateway does not read"


def test_an_application_identity_renders_its_kind_and_tenant_only_and_mounts_no_secret():
    values = {"identities": {"automation": {"kind": "application", "tenant_id": "11111111-1111-1111-1111-111111111111"}}}
    objs = objects(values)
    identity = tomllib.loads(render.gateway_toml(objs))["identities"]["automation"]
    assert identity == {"kind": "application", "tenant_id": "11111111-1111-1111-1111-111111111111"}
    spec, container = pod(values)
    assert not any(v["name"] == "secrets" for v in spec["volumes"])
    assert "--identity automation" not in notes(values) and "admin consent" in notes(values)


@pytest.mark.parametrize("extra", [{"storeKeySecret": {"name": "s", "key": "k"}}, {"scopes": ["x"]}])
def test_an_application_identity_with_a_session_key_or_scopes_is_refused(extra):
    identity = {"kind": "application", "tenant_id": "11111111-1111-1111-1111-111111111111", **extra}
    with pytest.raises(helm.HelmValuesError):
        render.render({"identities": {"automation": identity}})


def test_a_delegated_identity_still_needs_its_session_key():
    with pytest.raises(helm.HelmValuesError):
        render.render({"identities": {"bot": {"tenant_id": "11111111-1111-1111-1111-111111111111"}}})


def notes(values: dict) -> str:
    return next(t for p, t in render.render(values).items() if p.endswith("NOTES.txt"))


def test_the_notes_show_sync_login_and_audit_verify_for_the_release():
    text = notes(values_of("values-all"))
    assert "https://sync-gateway.example.com/sync" in text
    for name in ("webhook", "chat-bot"):
        assert f"exec -it deploy/sg-sync-gateway -- \\\n       sync-gateway login --config /etc/sync-gateway/gateway.toml --identity {name}" in text
    assert "audit verify --postgres-schema sync_gateway_audit" in text and "postgres://" not in text
    assert "NOT READY" not in text
    text = notes(values_of("values-minimal"))
    assert "port-forward svc/sg-sync-gateway 8080:8080" in text
    assert "'sync-gateway audit verify /data/audit.jsonl*'" in text
    missing = notes({})
    assert "NOT READY" in missing and "config.entra.tenant_id" in missing and "a client credential" in missing


def test_hook_sources_render_with_their_secrets_mounted_and_discord_without():
    config = tomllib.loads(render.gateway_toml(objects(values_of("values-all"))))
    hooks = config["hooks"]
    assert set(hooks) == {"servicedesk", "chat", "discord"}
    assert hooks["servicedesk"]["secrets_file"] == "/var/run/secrets/sync-gateway/hooks/servicedesk.secrets"
    assert hooks["servicedesk"]["when"] == {"pointer": "/transition/to_status", "equals": "Ready for Autopilot"}
    assert hooks["chat"]["allow"] == {"teams": ["T0123"], "channels": ["C0456"], "users": []}
    assert "secrets_file" not in hooks["discord"] and len(hooks["discord"]["public_key"]) == 64
    # Only Discord sources: no Secret to mount.
    only_discord = {"hooks": {"d": {"kind": "discord", "run_as": "x", "public_key": "ab" * 32}}}
    spec, _ = pod(only_discord)
    assert not [v for v in spec["volumes"] if v["name"] == "secrets"]


@pytest.mark.parametrize("hook", [
    {"kind": "github", "run_as": "x"},  # no secretsSecret
    {"kind": "github", "run_as": "x", "secrets": "s3cret", "secretsSecret": {"name": "n", "key": "k"}},
    {"kind": "discord", "run_as": "x"},  # no public_key
    {"kind": "discord", "run_as": "x", "public_key": "ab" * 32, "secretsSecret": {"name": "n", "key": "k"}},
    {"kind": "bitbucket", "run_as": "x", "secretsSecret": {"name": "n", "key": "k"}},
])
def test_a_hook_source_without_its_proof_or_with_a_secret_value_is_refused(hook):
    with pytest.raises(helm.HelmValuesError):
        render.render({"hooks": {"src": hook}})
