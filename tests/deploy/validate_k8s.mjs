// Validates Kubernetes objects against the schemas bundled in the npm packages kubernetes-models
// (core API groups) and @kubernetes-models/prometheus-operator (ServiceMonitor, PrometheusRule).
// Input: a JSON array of objects on stdin (tests/deploy/check_deploy.py renders the kustomize
// overlays and converts them). Output: one line per object, "ok KIND/NAME" or "error KIND/NAME:
// <path> <message>"; exit status 1 when any object is invalid or of an unknown kind.
import { readFileSync } from "node:fs";

function modulePath(apiVersion) {
  if (apiVersion === "v1") return "kubernetes-models/v1";
  const [group, version] = apiVersion.split("/");
  if (group === "monitoring.coreos.com") return `@kubernetes-models/prometheus-operator/${group}/${version}`;
  return `kubernetes-models/${group}/${version}`;
}

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const obj of objects) {
  const label = `${obj.kind}/${obj.metadata?.name ?? "?"}`;
  let Model;
  try {
    const mod = await import(modulePath(String(obj.apiVersion)));
    Model = mod[obj.kind];
  } catch (e) {
    Model = undefined;
  }
  if (typeof Model !== "function") {
    console.log(`error ${label}: no schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok ${label}`);
  } catch (e) {
    const details = Array.isArray(e.errors) && e.errors.length
      ? e.errors.map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ")
      : e.message;
    console.log(`error ${label}: ${details}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
