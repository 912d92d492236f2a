"""Offline, strict validation of KubeRay manifests against the CRDs' OpenAPI schemas.

    kubectl kustomize k8s/overlays/gpu | python -m larimar_ops.crd --crds ../shared/k8s-crds -

`kubectl apply --dry-run=client` needs an API server to know a CRD, so CI cannot use it. The CRD
files carry the full OpenAPI v3 schema of each kind (pod templates included); this turns it into
a JSON schema and validates with jsonschema. Strict: an object schema that lists its properties
gets ``additionalProperties: false`` (the API server would prune an unknown key silently, so a
typo such as ``replica:`` or ``tolerations`` one level too deep would vanish without a word),
unless the schema says ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

METADATA_KEYS = {"name", "namespace", "labels", "annotations", "generateName"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 3 MB of YAML


def strict_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) -> JSON schema that rejects unknown keys."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":  # property names are data, not schema keywords: keep all of them
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif not key.startswith("x-kubernetes-"):
            out[key] = strict_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_validators(crd_dir: Path) -> dict[tuple[str, str], Any]:
    """{(apiVersion, kind): jsonschema validator} for every CRD YAML in `crd_dir`."""
    from jsonschema import Draft7Validator

    validators = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=_LOADER)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = Draft7Validator(schema)
    if not validators:
        raise FileNotFoundError(f"no CustomResourceDefinition in {crd_dir}")
    return validators


def errors(doc: dict, validators: dict[tuple[str, str], Any]) -> list[str]:
    """Every schema violation of one manifest, as 'Kind/name: path: message' lines."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    if key not in validators:
        return [f"{name}: no CRD for apiVersion={key[0]} kind={key[1]}"]
    out = [f"{name}: metadata.{k}: unknown field" for k in sorted(set(doc.get("metadata") or {}) - METADATA_KEYS)]
    for err in sorted(validators[key].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{name}: {path}: {err.message}")
    return out


def custom_resources(docs: Iterable[dict], validators) -> list[dict]:
    """The documents whose apiVersion belongs to a CRD group we hold (others are core kinds)."""
    groups = {api.split("/")[0] for api, _ in validators}
    return [d for d in docs if d and str(d.get("apiVersion", "")).split("/")[0] in groups]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crds", type=Path, required=True, help="directory of CRD YAML files")
    parser.add_argument("files", nargs="+", help="manifest files; - for stdin")
    opts = parser.parse_args(argv)
    validators = load_validators(opts.crds)
    docs = []
    for f in opts.files:
        docs += list(yaml.load_all(sys.stdin.read() if f == "-" else Path(f).read_text(), Loader=_LOADER))
    found = [e for d in custom_resources(docs, validators) for e in errors(d, validators)]
    for line in found:
        print(line, file=sys.stderr)
    checked = len(custom_resources(docs, validators))
    print(f"{checked} custom resources checked, {len(found)} errors")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
