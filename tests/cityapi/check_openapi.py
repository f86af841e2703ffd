#!/usr/bin/env python3
"""check_openapi.py - checks docs/openapi.yaml.

    python3 tests/cityapi/check_openapi.py        exit 0 when it is fine, 1 otherwise

1. Validation against the OpenAPI 3.0 specification, with the best tool there is:
   - the openapi_spec_validator module when it can be imported (pip; not in bookworm);
   - otherwise python3-jsonschema with the official OpenAPI 3.0 JSON schema from
     Debian's `openapi-specification` package
     (/usr/share/openapi-specification/schemas/v3.0/schema.json);
   - otherwise (said so on stdout) only the structural checks below.
2. Structural checks that always run: openapi 3.0.x, info, every path starts with "/",
   each operation has responses, every path parameter is declared, every $ref resolves,
   every 4xx/5xx response (but 304/204) is application/problem+json.
3. The paths and methods in the file are exactly the routes of tests/cityapi/server.py
   (ROUTES), so the documentation and the reference server stay in step.

Needs python3-yaml to load the file; without it, the route comparison (3) still runs on
a line-based reading of the `paths:` block and 1 and 2 are skipped with a message.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.join(HERE, "..", "..", "docs", "openapi.yaml")
DEBIAN_SCHEMA = "/usr/share/openapi-specification/schemas/v3.0/schema.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _norm(path):
    return re.sub(r"\{[^}]+\}", "{}", path)


def server_routes():
    sys.path.insert(0, HERE)
    import server  # noqa: E402 - stdlib only, no side effects on import
    return {(m.upper(), _norm(p)) for m, p in server.ROUTES}


def load_spec():
    """The spec as a dict (PyYAML), or None when PyYAML is not installed."""
    try:
        import yaml
    except ImportError:
        return None
    with open(SPEC, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _routes_from_text():
    routes, path, in_paths = set(), None, False
    with open(SPEC, encoding="utf-8") as f:
        for line in f:
            if re.match(r"^\S", line):
                in_paths = line.startswith("paths:")
                continue
            if not in_paths:
                continue
            m = re.match(r"^  (/\S*):\s*$", line)
            if m:
                path = m.group(1)
                continue
            m = re.match(r"^    ([a-z]+):", line)
            if m and path and m.group(1) in METHODS:
                routes.add((m.group(1).upper(), _norm(path)))
    return routes


def spec_routes(spec):
    if spec is None:
        return _routes_from_text()
    return {(m.upper(), _norm(p)) for p, item in spec.get("paths", {}).items()
            for m in item if m in METHODS}


def _resolve(spec, ref):
    if not ref.startswith("#/"):
        raise KeyError(ref)
    node = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def structural(spec):
    errors = []
    if not re.fullmatch(r"3\.0\.\d+", str(spec.get("openapi", ""))):
        errors.append("openapi: not 3.0.x")
    info = spec.get("info") or {}
    if not info.get("title") or not info.get("version"):
        errors.append("info: title and version required")

    def walk(node, where):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    _resolve(spec, ref)
                except (KeyError, TypeError):
                    errors.append(f"{where}: $ref {ref} does not resolve")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(spec, "#")

    def deref(node):
        while isinstance(node, dict) and "$ref" in node:
            node = _resolve(spec, node["$ref"])
        return node

    for path, item in (spec.get("paths") or {}).items():
        if not path.startswith("/"):
            errors.append(f"{path}: does not start with /")
        templ = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            if not op.get("responses"):
                errors.append(f"{where}: no responses")
            try:
                params = [deref(p) for p in item.get("parameters", []) + op.get("parameters", [])]
                declared = {p["name"] for p in params if p.get("in") == "path"}
                if declared != templ:
                    errors.append(f"{where}: path parameters {sorted(declared)} != {sorted(templ)}")
                for code, resp in (op.get("responses") or {}).items():
                    resp = deref(resp)
                    if str(code)[0] in "45" or code == "default":
                        if "application/problem+json" not in (resp.get("content") or {}):
                            errors.append(f"{where} {code}: not application/problem+json")
            except (KeyError, TypeError) as e:
                errors.append(f"{where}: {e!r}")
    return errors


def validate(spec, verbose):
    """-> (tool name or None, errors)"""
    try:
        import openapi_spec_validator as osv  # type: ignore
        validate_spec = getattr(osv, "validate", None) or osv.validate_spec
    except ImportError:
        validate_spec = None
    if validate_spec is not None:
        try:
            validate_spec(spec)
            return "openapi_spec_validator", []
        except Exception as e:  # noqa: BLE001 - the validator's own error types vary
            return "openapi_spec_validator", [str(e)]
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None and os.path.exists(DEBIAN_SCHEMA):
        with open(DEBIAN_SCHEMA, encoding="utf-8") as f:
            schema = json.load(f)
        # YAML may load `example: 2026-...` style values as dates; JSON never does.
        spec = json.loads(json.dumps(spec, default=str))
        v = jsonschema.Draft4Validator(schema)
        errs = sorted(v.iter_errors(spec), key=lambda e: list(e.path))
        return "jsonschema + " + DEBIAN_SCHEMA, [
            "/".join(map(str, e.path)) + ": " + e.message for e in errs]
    if verbose:
        print("check_openapi: no validator (install python3-jsonschema and "
              "openapi-specification, or openapi-spec-validator): structural checks only")
    return None, []


def _to_json_schema(node):
    """An OpenAPI 3.0 schema object -> JSON Schema (draft 4): nullable becomes a union
    with null, refs point into "definitions"."""
    if isinstance(node, list):
        return [_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items()
           if k not in ("nullable", "example", "discriminator", "xml", "externalDocs")}
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def schema_validator(spec, name):
    """-> function(instance) -> list of error strings, for components.schemas[name];
    None when python3-jsonschema is not installed."""
    try:
        import jsonschema
    except ImportError:
        return None
    defs = {k: _to_json_schema(v) for k, v in spec["components"]["schemas"].items()}
    v = jsonschema.Draft4Validator({"definitions": defs,
                                    "allOf": [{"$ref": f"#/definitions/{name}"}]})
    return lambda inst: ["/".join(map(str, e.path)) + ": " + e.message
                         for e in v.iter_errors(inst)]


def check(verbose=True):
    errors = []
    spec = load_spec()
    if spec is None:
        if verbose:
            print("check_openapi: python3-yaml missing: only the routes are compared")
    else:
        tool, errs = validate(spec, verbose)
        if verbose and tool:
            print(f"check_openapi: validated with {tool}")
        errors += errs
        errors += structural(spec)
    want, have = server_routes(), spec_routes(spec)
    for m, p in sorted(want - have):
        errors.append(f"server route {m} {p} is not in docs/openapi.yaml")
    for m, p in sorted(have - want):
        errors.append(f"docs/openapi.yaml has {m} {p}, which the server does not serve")
    return errors


def main():
    errors = check()
    for e in errors:
        print("check_openapi: FAIL: " + e)
    if not errors:
        print(f"check_openapi: docs/openapi.yaml OK ({len(server_routes())} routes)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
