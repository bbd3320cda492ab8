"""JSON-schema validation for the tests: ``jsonschema`` (a project dependency) when importable, else a small checker.

Covers what the tests' schemas use: type, properties, required, additionalProperties,
items, enum, const, anyOf/oneOf, minItems/maxItems, minLength/maxLength and local $refs.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """What is wrong with ``value`` against ``schema`` (empty: valid)."""
    try:
        import jsonschema
    except ImportError:
        return _errors(value, schema, root or schema, path)
    return [f"{'/'.join(map(str, e.path)) or '$'}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]


def _errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return _errors(value, target, root, path)
    if "anyOf" in schema or "oneOf" in schema:
        branches = schema.get("anyOf") or schema["oneOf"]
        results = [_errors(value, b, root, path) for b in branches]
        return [] if any(not r for r in results) else [f"{path}: matches no branch ({results})"]
    out: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        is_bool = isinstance(value, bool)
        if not any(isinstance(value, _TYPES[k]) and not (is_bool and k in ("integer", "number")) for k in kinds):
            return [f"{path}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                out += _errors(v, props[k], root, f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}: unexpected property {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += _errors(v, schema["additionalProperties"], root, f"{path}.{k}")
    if isinstance(value, list):
        if "items" in schema:
            for i, item in enumerate(value):
                out += _errors(item, schema["items"], root, f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            out.append(f"{path}: {len(value)} items out of bounds")
    if isinstance(value, str) and (len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value))):
        out.append(f"{path}: length {len(value)} out of bounds")
    return out
