"""``/v1/webhook-endpoints``: create (secret once), list, get, delete, org scope, validation,
and the refusal of private targets."""

from __future__ import annotations

from typing import Any

import pytest

from runs.webhooks.targets import check_target, is_public_address
from tests.conftest import Api
from tests.webhooks.conftest import register

HOOKS = "/v1/webhook-endpoints"


async def test_create_shows_the_secret_once_and_lists_get_delete(api: Api) -> None:
    created = await register(api, "http://127.0.0.1:9/a", description="ci")
    assert set(created) == {
        "id",
        "url",
        "events",
        "description",
        "status",
        "created_at",
        "disabled_at",
        "disabled_reason",
        "secret",
    }
    assert created["status"] == "active"
    assert created["description"] == "ci"
    assert len(created["secret"]) == len("whsec_") + 64
    _, shown = await api.request("GET", f"{HOOKS}/{created['id']}", expect=200)
    assert "secret" not in shown
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    second = await register(api, "https://127.0.0.1/b", events=["run.failed", "run.completed"])
    # Kept in the documented order, whatever order they were given in.
    assert second["events"] == ["run.completed", "run.failed"]
    assert second["secret"] != created["secret"]

    _, listed = await api.request("GET", HOOKS, expect=200)
    assert [e["id"] for e in listed] == [second["id"], created["id"]]
    assert all("secret" not in e for e in listed)
    _, page = await api.request("GET", f"{HOOKS}?limit=1&before={second['id']}", expect=200)
    assert [e["id"] for e in page] == [created["id"]]

    assert (await api.request("DELETE", f"{HOOKS}/{created['id']}", expect=200))[1] == {"ok": True}
    await api.request("GET", f"{HOOKS}/{created['id']}", expect=404)
    await api.request("DELETE", f"{HOOKS}/{created['id']}", expect=404)
    await api.request("GET", f"{HOOKS}/{created['id']}/deliveries", expect=404)
    _, listed = await api.request("GET", HOOKS, expect=200)
    assert [e["id"] for e in listed] == [second["id"]]


async def test_another_orgs_endpoint_is_not_found(api: Api) -> None:
    created = await register(api, "http://127.0.0.1:9/a")
    other = await api.new_org_key()
    for method, path in [
        ("GET", f"{HOOKS}/{created['id']}"),
        ("DELETE", f"{HOOKS}/{created['id']}"),
        ("GET", f"{HOOKS}/{created['id']}/deliveries"),
    ]:
        status, body = await api.request(method, path, key=other)
        assert status == 404, (method, path, body)
        assert body["code"] == "not_found"
    _, listed = await api.request("GET", HOOKS, key=other, expect=200)
    assert listed == []
    # And it is still there for its own org.
    await api.request("GET", f"{HOOKS}/{created['id']}", expect=200)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.com/x"}, "validation.url"),
        ({"url": "example.com/x"}, "validation.url"),
        ({"url": "http://user:pw@example.com/x"}, "validation.url"),
        ({"url": "http:///nohost"}, "validation.url"),
        ({"url": "http://example.com/a b"}, "validation.url"),
        ({"url": "https://example.com/" + "x" * 2100}, "validation.url"),
        ({"url": "https://example.com/x", "events": ["run.started"]}, "validation.events"),
        ({"url": "https://example.com/x", "events": []}, "validation.events"),
        ({"url": "https://example.com/x", "secret": "mine"}, "validation.unknown_field"),
        ({}, "validation.url"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    api: Api, body: dict[str, Any], code: str
) -> None:
    status, error = await api.request("POST", HOOKS, json=body)
    assert (status, error["code"]) == (400, code), error


async def test_malformed_ids_and_cursors(api: Api) -> None:
    await api.request("GET", f"{HOOKS}/not-an-id", expect=404)
    await api.request("GET", f"{HOOKS}?before=nope", expect=400)
    await api.request("GET", f"{HOOKS}?limit=0", expect=400)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
    ],
)
async def test_private_targets_are_refused_by_default(
    aiohttp_client: Any, make_app: Any, url: str
) -> None:
    from tests.conftest import ADMIN_KEY

    api = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    status, error = await api.request("POST", HOOKS, json={"url": url})
    assert status == 422, error
    assert error["code"] == "policy.webhook_private_target"
    assert error["details"]["field"] == "url"
    _, listed = await api.request("GET", HOOKS, expect=200)
    assert listed == []


async def test_public_targets_are_accepted_by_default() -> None:
    await check_target("https://93.184.215.14/hook", allow_private=False)
    await check_target("http://[2606:4700:4700::1111]:8443/x", allow_private=False)


def test_address_classes() -> None:
    public = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"]
    private = ["127.0.0.1", "10.0.0.1", "::1", "fe80::1", "224.0.0.1", "240.0.0.1", "nonsense"]
    assert [is_public_address(a) for a in public] == [True] * len(public)
    assert [is_public_address(a) for a in private] == [False] * len(private)


async def test_the_delivery_resolver_keeps_only_public_addresses() -> None:
    from runs.webhooks.targets import PublicResolver

    resolver = PublicResolver()
    try:
        with pytest.raises(OSError, match="private"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_an_org_has_at_most_the_configured_number_of_endpoints(
    aiohttp_client: Any, make_app: Any
) -> None:
    from tests.conftest import ADMIN_KEY

    api = Api(
        await aiohttp_client(
            make_app(webhooks_allow_private=True, webhooks_max_endpoints_per_org=2)
        ),
        ADMIN_KEY,
    )
    first = await register(api, "http://127.0.0.1:9/1")
    await register(api, "http://127.0.0.1:9/2")
    status, error = await api.request("POST", HOOKS, json={"url": "http://127.0.0.1:9/3"})
    assert (status, error["code"], error["details"]["limit"]) == (
        422,
        "policy.webhook_endpoint_limit",
        2,
    )
    # Another org has its own count; a deleted endpoint frees its place.
    other = await api.new_org_key()
    await api.request("POST", HOOKS, json={"url": "http://127.0.0.1:9/o"}, key=other, expect=201)
    await api.request("DELETE", f"{HOOKS}/{first['id']}", expect=200)
    await register(api, "http://127.0.0.1:9/3")
