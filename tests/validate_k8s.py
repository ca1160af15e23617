#!/usr/bin/env python3
"""Builds every Kubernetes overlay with `kubectl kustomize` and validates each object against the
Kubernetes API schema of Debian's python3-kubernetes models: every field must exist in the
model (typos are errors), required fields must be present, and nested objects are checked the
same way. Custom resources (the Prometheus Operator's ServiceMonitor) get a structural check.

usage: validate_k8s.py DEPLOY_K8S_DIR
"""
import os
import subprocess
import sys

import yaml
import kubernetes.client
from kubernetes.client import models

errors = []


def model_class(api_version, kind):
    group, _, version = api_version.rpartition("/")
    return getattr(models, version.capitalize() + kind, None)


def check(value, type_name, path):
    """Checks `value` against the openapi type name of python3-kubernetes."""
    if value is None:
        return
    if type_name.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{i}]")
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map")
            return
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for k, v in value.items():
            check(v, inner, f"{path}.{k}")
        return
    if type_name in ("str", "int", "bool", "float", "object", "datetime", "date"):
        if type_name == "int" and not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {value!r}")
        if type_name == "bool" and not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean, got {value!r}")
        return
    klass = getattr(models, type_name, None)
    if klass is None:
        errors.append(f"{path}: unknown type {type_name}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object of type {type_name}")
        return
    by_json = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        if (type_name, key) in NEWER_FIELDS:
            schema = NEWER_FIELDS[(type_name, key)]
            for field, field_type in schema.items():
                if field == "port" and not isinstance(v.get(field), int):
                    errors.append(f"{path}.{key}: needs an integer port")
                elif field in v and not isinstance(v[field], field_type):
                    errors.append(f"{path}.{key}.{field}: wrong type")
            for field in v:
                if field not in schema:
                    errors.append(f"{path}.{key}: unknown field '{field}'")
            kwargs["_newer"] = "x"
            continue
        if key not in by_json:
            errors.append(f"{path}: unknown field '{key}' for {type_name}")
            continue
        attr = by_json[key]
        check(v, klass.openapi_types[attr], f"{path}.{key}")
        kwargs[attr] = "x" if v is not None else None  # presence is what the constructor checks
    # Required fields: the model's setters reject None for them (other fields get placeholders).
    config = kubernetes.client.Configuration()
    config.client_side_validation = True
    for attr in klass.openapi_types:
        if kwargs.get(attr) is not None:
            continue
        others = {k: "x" for k in klass.openapi_types if k != attr}
        try:
            klass(local_vars_configuration=config, **others, **{attr: None})
        except ValueError as e:
            if f"`{attr}`, must not be `None`" in str(e):
                errors.append(f"{path}: {type_name} requires '{klass.attribute_map[attr]}'")


# Fields newer than python3-kubernetes' API (1.22): gRPC probes (beta 1.24, stable 1.27).
NEWER_FIELDS = {("V1Probe", "grpc"): {"port": int, "service": str}}


def check_service_monitor(doc, path):
    spec = doc.get("spec", {})
    if not isinstance(spec.get("selector", {}).get("matchLabels"), dict):
        errors.append(f"{path}: ServiceMonitor needs spec.selector.matchLabels")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        errors.append(f"{path}: ServiceMonitor needs spec.endpoints")
    for i, e in enumerate(endpoints or []):
        if "port" not in e:
            errors.append(f"{path}.spec.endpoints[{i}]: needs a port name")


def main():
    root = sys.argv[1]
    overlays = sorted(os.listdir(os.path.join(root, "overlays")))
    assert overlays, "no overlays"
    for overlay in overlays:
        out = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                              os.path.join(root, "overlays", overlay)], check=True, capture_output=True, text=True)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = sorted(d["kind"] for d in docs)
        for doc in docs:
            path = f"{overlay}/{doc['kind']}/{doc['metadata']['name']}"
            if doc["apiVersion"] == "monitoring.coreos.com/v1":
                check_service_monitor(doc, path)
                continue
            klass = model_class(doc["apiVersion"], doc["kind"])
            if klass is None:
                errors.append(f"{path}: no schema for {doc['apiVersion']} {doc['kind']}")
                continue
            check(doc, klass.__name__, path)
        for needed in ("Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "ConfigMap", "Namespace",
                       "ServiceMonitor"):
            if needed not in kinds:
                errors.append(f"{overlay}: no {needed}")
        print(f"{overlay}: {len(docs)} objects: {', '.join(kinds)}")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print("all objects valid")


if __name__ == "__main__":
    main()
