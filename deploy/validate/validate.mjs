// Validate custom resources against their published schemas: reads a JSON array of
// Kubernetes objects on stdin, prints a JSON array of
// {kind, name, error} (error null when valid, or when no schema of ours covers the kind).
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const MODELS = { "keda.sh/v1alpha1": keda, "monitoring.coreos.com/v1": monitoring };

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((obj) => {
  const group = MODELS[obj.apiVersion];
  const Model = group && group[obj.kind];
  const name = obj.metadata?.name ?? null;
  if (!Model) return { kind: obj.kind, name, error: null, covered: false };
  try {
    new Model(obj).validate();
    return { kind: obj.kind, name, error: null, covered: true };
  } catch (err) {
    return { kind: obj.kind, name, error: String(err.message ?? err), covered: true };
  }
});
process.stdout.write(JSON.stringify(results));
