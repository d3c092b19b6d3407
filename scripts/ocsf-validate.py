#!/usr/bin/env python3
"""Validate OCSF events (JSON lines on stdin or in FILEs) against the official schema.

Each event is checked against the JSON-schema rendering (ocsf-json-schema) of its own
`class_uid`, at the version it claims in `metadata.version`, with the profiles it lists in
`metadata.profiles`: what a strict consumer (a security data lake that rejects invalid
OCSF) does. Prints one line per problem, `LINE: CLASS: PATH: MESSAGE`, and exits 1 if any
event is invalid, 2 on unusable input. Needs `ocsf-json-schema` and `jsonschema`
(scripts/setup.sh installs both into /opt/agentid-test-venv).
"""
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

_schemas = {}
_validators = {}


def validator(version, class_uid, profiles):
    if version not in _schemas:
        _schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    key = (version, class_uid, tuple(profiles))
    if key not in _validators:
        schema = _schemas[version]
        name = schema.lookup_class_name_from_uid(class_uid=class_uid)
        _validators[key] = (
            name,
            Draft202012Validator(schema.get_class_schema(class_name=name, profiles=list(profiles))),
        )
    return _validators[key]


def main(paths):
    streams = [open(p, encoding="utf-8") for p in paths] if paths else [sys.stdin]
    invalid = checked = 0
    for stream in streams:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                meta = event["metadata"]
                name, v = validator(meta["version"], event["class_uid"], meta.get("profiles", []))
            except (ValueError, KeyError, TypeError) as e:
                print(f"{n}: unusable event: {e!r}")
                return 2
            checked += 1
            errors = sorted(v.iter_errors(event), key=lambda e: list(e.absolute_path))
            for e in errors:
                path = "/".join(str(p) for p in e.absolute_path) or "(root)"
                print(f"{n}: {name}: {path}: {e.message}")
            invalid += bool(errors)
    print(f"{checked} events checked, {invalid} invalid", file=sys.stderr)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
