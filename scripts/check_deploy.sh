#!/usr/bin/env bash
# Checks the delivery files without a Docker engine or a cluster (run by scripts/test.sh):
# - Prometheus config and alert rules: promtool check config (it checks the rule files too);
# - docker-compose.yml against the Compose specification's JSON schema (the compose_spec.json
#   shipped in PyPI's docker-compose 1.29.2 wheel, downloaded once; only that file is used);
# - the Kubernetes Deployment with kubernetes-validate (PyPI; bundled API schemas, strict); the
#   KEDA ScaledObject is a CRD it has no schema for: checked for its required fields only.
# The Grafana dashboards are checked by tests/deploy_files.rs (every query names a metric the
# worker exports or a table/view the schema creates).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .state/env.sh
CACHE=${VAXPULSE_HOME:-$HOME/.cache/vaxpulse}/deploy-check
mkdir -p "$CACHE"

echo "deploy check: promtool check config (+ rules)"
promtool check config deploy/prometheus/prometheus.yml

python3 -m pip -q install jsonschema==4.26.0 kubernetes-validate==1.37.0 pyyaml 2>/dev/null \
  || python3 -m pip -q install jsonschema kubernetes-validate pyyaml
[ -f "$CACHE/compose_spec.json" ] || {
  python3 -m pip -q download docker-compose==1.29.2 --no-deps -d "$CACHE"
  python3 - "$CACHE" <<'PY'
import glob, sys, zipfile
z = zipfile.ZipFile(glob.glob(f"{sys.argv[1]}/docker_compose-1.29.2-*.whl")[0])
open(f"{sys.argv[1]}/compose_spec.json", "wb").write(z.read("compose/config/compose_spec.json"))
PY
}
echo "deploy check: docker-compose.yml against the Compose specification schema"
python3 - "$CACHE/compose_spec.json" <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open("docker-compose.yml"))  # anchors and merge keys resolved
jsonschema.validate(doc, schema)
services = sorted(doc["services"])
print(f"  valid: services {', '.join(services)}; volumes {', '.join(sorted(doc.get('volumes', {})))}")
for name, svc in doc["services"].items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith("./"):
            import os
            assert os.path.exists(src), f"service {name} mounts {src}, which does not exist"
PY

echo "deploy check: Kubernetes manifests"
kubernetes-validate --strict deploy/k8s/worker.yaml
python3 - <<'PY'
import yaml
d = yaml.safe_load(open("deploy/k8s/keda.yaml"))
assert d["apiVersion"] == "keda.sh/v1alpha1" and d["kind"] == "ScaledObject"
spec = d["spec"]
assert spec["scaleTargetRef"]["name"] == "vaxpulse-worker"
for t in spec["triggers"]:
    assert t["type"] == "kafka" and all(isinstance(v, str) for v in t["metadata"].values()), t
print("  keda.yaml: ScaledObject targets vaxpulse-worker; trigger metadata all strings")
PY
echo "deploy check: ok"
