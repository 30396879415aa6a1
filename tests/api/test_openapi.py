"""``GET /openapi.json``: an OpenAPI 3.1 document that matches the routes and the msgspec types."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema_rs
import msgspec
import pytest
import schemathesis
from aiohttp import web

from runs import schemas
from runs.openapi import OPERATIONS, REF_TEMPLATE, document
from runs.run import RUN_STATUSES
from tests.conftest import ADMIN_KEY, Api

ERROR_REF = {"$ref": "#/components/schemas/Error"}
REQUEST_TYPES = {
    ("POST", "/v1/auth/login"): schemas.Login,
    ("POST", "/v1/threads"): schemas.CreateThread,
    ("POST", "/v1/threads/{thread_id}/messages"): schemas.CreateMessage,
    ("POST", "/v1/threads/{thread_id}/runs"): schemas.CreateRun,
    ("POST", "/v1/runs/{run_id}/input"): schemas.SubmitInput,
    ("POST", "/v1/webhook-endpoints"): schemas.CreateWebhookEndpoint,
}
RESPONSE_TYPES = {
    ("POST", "/v1/auth/login", "200"): schemas.LoginResult,
    ("POST", "/v1/threads", "201"): schemas.Thread,
    ("GET", "/v1/threads", "200"): list[schemas.Thread],
    ("GET", "/v1/threads/{thread_id}", "200"): schemas.Thread,
    ("POST", "/v1/threads/{thread_id}/messages", "201"): schemas.Message,
    ("GET", "/v1/threads/{thread_id}/messages", "200"): list[schemas.Message],
    ("POST", "/v1/threads/{thread_id}/runs", "201"): schemas.RunCreated,
    ("GET", "/v1/threads/{thread_id}/runs", "200"): list[schemas.ThreadRun],
    ("GET", "/v1/runs", "200"): list[schemas.Run],
    ("GET", "/v1/runs/{run_id}", "200"): schemas.RunDetail,
    ("POST", "/v1/runs/{run_id}:cancel", "200"): schemas.CancelReceipt,
    ("POST", "/v1/runs/{run_id}/cancel", "200"): schemas.CancelReceipt,
    ("POST", "/v1/runs/{run_id}/retry", "201"): schemas.RunCreated,
    ("POST", "/v1/runs/{run_id}/input", "200"): schemas.Ok,
    ("GET", "/v1/tools", "200"): list[schemas.ToolInfo],
    ("POST", "/v1/webhook-endpoints", "201"): schemas.NewWebhookEndpoint,
    ("GET", "/v1/webhook-endpoints", "200"): list[schemas.WebhookEndpoint],
    ("GET", "/v1/webhook-endpoints/{endpoint_id}", "200"): schemas.WebhookEndpoint,
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}", "200"): schemas.Ok,
    ("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries", "200"): list[schemas.WebhookDelivery],
}


def _registered(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
    ]


def _schema_of(type_: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    (ref,), components = msgspec.json.schema_components([type_], ref_template=REF_TEMPLATE)
    return ref, components


async def test_served_without_auth_as_openapi_3_1(api: Api) -> None:
    async with api.client.get("/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["X-Trace-Id"]
        served = await response.json()
    assert served == document()
    assert served["openapi"] == "3.1.0"
    # The OpenAPI 3.1 meta-schema (as shipped with schemathesis) accepts it.
    schemathesis.openapi.from_dict(served).validate()


def test_the_meta_schema_check_can_fail() -> None:
    broken = copy.deepcopy(document())
    broken["paths"]["/v1/threads"]["get"]["responses"] = "nothing"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


async def test_every_route_is_documented_and_every_documented_route_exists(api: Api) -> None:
    registered = _registered(api.client.app)
    documented = _documented(document())
    assert registered - documented == set(), "routes missing from the document"
    assert documented - registered == set(), "documented routes that do not exist"
    # The operation table has one row for each route (in a reader's order, where the routes
    # are in the order the router tries them).
    assert sorted((op.method, op.path) for op in OPERATIONS) == sorted(
        (r.method, r.resource.canonical)
        for r in api.client.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    )
    # And each documented route answers something other than 404/405 when called.
    for method, path in sorted(documented):
        concrete = re.sub(r"\{[a-z_]+\}", "x", path)
        async with api.client.request(method, concrete, headers=api.headers()) as response:
            if "{" in path:
                # A malformed id is the handler's 404, not the router's "no such resource".
                assert response.status == 404
                assert (await response.json())["message"] in {
                    "thread not found",
                    "run not found",
                    "no such console file",
                    "endpoint not found",
                }
            else:
                assert response.status not in (404, 405), (method, path)


async def test_an_extra_documented_route_would_be_caught(api: Api) -> None:
    doc = copy.deepcopy(document())
    doc["paths"]["/v1/nothing"] = {"get": {}}
    assert _documented(doc) - _registered(api.client.app) == {("GET", "/v1/nothing")}


def test_component_schemas_are_generated_by_msgspec_from_the_handler_types() -> None:
    doc = document()
    components = doc["components"]["schemas"]
    for name in schemas.__all__:
        type_ = getattr(schemas, name)
        if not isinstance(type_, type):
            continue
        ref, generated = _schema_of(type_)
        assert ref == {"$ref": REF_TEMPLATE.format(name=name)}
        for key, value in generated.items():
            assert components[key] == value, key
        # Not a hand-kept copy: the fields are exactly the struct's.
        assert list(components[name]["properties"]) == list(type_.__struct_encode_fields__)


def test_request_and_response_bodies_name_the_handler_types() -> None:
    doc = document()
    for (method, path), type_ in REQUEST_TYPES.items():
        body = doc["paths"][path][method.lower()]["requestBody"]
        assert body["content"]["application/json"]["schema"] == _schema_of(type_)[0]
    assert doc["paths"]["/v1/threads"]["post"]["requestBody"]["required"] is False
    assert doc["paths"]["/v1/runs/{run_id}/input"]["post"]["requestBody"]["required"] is True
    for (method, path, status), type_ in RESPONSE_TYPES.items():
        response = doc["paths"][path][method.lower()]["responses"][status]
        assert response["content"]["application/json"]["schema"] == _schema_of(type_)[0]


def test_every_error_response_is_the_error_schema_with_a_trace_header() -> None:
    doc = document()
    shared = doc["components"]["responses"]
    seen = 0
    for method, path, op in _operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400:
                assert "X-Trace-Id" in response["headers"]
                continue
            seen += 1
            resolved = shared[response["$ref"].rsplit("/", 1)[1]]
            assert resolved["content"] == {"application/json": {"schema": ERROR_REF}}
            assert "X-Trace-Id" in resolved["headers"], (method, path, status)
    assert seen > 40
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "message", "details", "trace_id"]


def test_bearer_security_on_every_v1_operation_but_login() -> None:
    doc = document()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    for method, path, op in _operations(doc):
        public = not path.startswith("/v1/") or path == "/v1/auth/login"
        assert op["security"] == ([] if public else [{"bearer": []}]), (method, path)
        # Login refuses bad credentials; /metrics refuses a wrong metrics_token.
        refuses = not public or path in {"/v1/auth/login", "/metrics"}
        assert ("401" in op["responses"]) == refuses, (method, path)


def _params(method: str, path: str) -> dict[str, dict[str, Any]]:
    op = document()["paths"][path][method.lower()]
    return {p["name"]: p for p in op["parameters"]}


def test_query_and_path_parameters() -> None:
    for path in ("/v1/threads", "/v1/runs"):
        params = _params("GET", path)
        assert params["limit"]["schema"]["minimum"] == 1
        assert params["limit"]["schema"]["maximum"] == 200
        assert params["before"]["in"] == "query"
    assert _params("GET", "/v1/runs")["status"]["schema"]["enum"] == list(RUN_STATUSES)
    for path in ("/v1/threads/{thread_id}/messages", "/v1/threads/{thread_id}/runs"):
        assert set(_params("GET", path)) == {"thread_id", "limit"}
    detail = _params("GET", "/v1/runs/{run_id}")
    assert detail["run_id"]["in"] == "path"
    assert detail["run_id"]["required"] is True
    assert detail["as_of_seq"]["schema"]["minimum"] == 1
    events = _params("GET", "/v1/runs/{run_id}/events")
    assert set(events) == {"run_id", "after_seq", "follow", "Last-Event-ID"}
    assert events["after_seq"]["schema"]["minimum"] == 0
    assert events["Last-Event-ID"]["in"] == "header"
    # Every {name} of a path is a documented path parameter.
    for method, path, op in _operations(document()):
        names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert names == {s[1:-1] for s in path.replace(":", "/").split("/") if s[:1] == "{"}, (
            method,
            path,
        )


async def test_sse_endpoint_is_documented_as_event_stream_of_sse_frames(api: Api) -> None:
    op = document()["paths"]["/v1/runs/{run_id}/events"]["get"]
    media = op["responses"]["200"]["content"]
    assert list(media) == ["text/event-stream"]
    event = media["text/event-stream"]["schema"]
    assert event["required"] == ["id", "data"]
    assert event["properties"]["data"]["contentMediaType"] == "application/json"
    assert event["properties"]["data"]["contentSchema"] == {
        "$ref": REF_TEMPLATE.format(name="SseFrame")
    }
    assert "id: <seq>" in op["description"]
    assert "{seq, type, data, created_at}" in op["description"]
    # The frames the server sends conform to the documented frame schema.
    _, run_id = await api.start_run("hello")
    await api.wait_for(run_id)
    frame_schema = {
        **document()["components"]["schemas"]["SseFrame"],
        "additionalProperties": False,
    }
    validator = jsonschema_rs.validator_for(frame_schema)
    async with api.client.get(
        f"/v1/runs/{run_id}/events", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as response:
        assert response.content_type == "text/event-stream"
        text = await response.text()
    frames = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert len(frames) >= 3
    for frame in frames:
        validator.validate(msgspec.json.decode(frame))
