"""Schemathesis hooks for the schema fuzz (fuzz.rs): a serializer for the
import's JSON-lines body, which the document gives as a string and
schemathesis has no serializer for."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    # Bodies outside the schema (negative cases): one JSON value.
    return json.dumps(value).encode("utf-8")
