"""``runlog admin`` and ``runlog verify`` as real subprocesses on the same log file the running
server uses: each change is an event, safe while the server runs."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from runs.cli import main as cli_main
from runs.ids import is_id
from tests.conftest import ADMIN_KEY, Api

ROOT = Path(__file__).resolve().parents[2]
# ``python -m runs`` is the ``runlog`` entry point (``runs.cli:main``) without needing the
# console script on PATH.
CLI = [sys.executable, "-m", "runs"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNLOG_")}


async def run_cli(*args: str, program: list[str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(program or CLI),
        *args,
        cwd=ROOT,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def admin(db: str, *args: str) -> str:
    """Run ``runlog admin --db DB ARGS`` and return its stdout; it must succeed."""
    code, out, err = await run_cli("admin", "--db", db, *args)
    assert code == 0, (args, out, err)
    assert "Traceback" not in err
    return out


async def test_admin_commands_while_the_server_runs(
    aiohttp_client: Any, make_app: Callable[..., web.Application], db_path: str
) -> None:
    api = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    await api.create_thread("written by the server first")

    org_id = (await admin(db_path, "create-org", "--name", "acme")).strip()
    assert is_id(org_id)
    user_id = (
        await admin(
            db_path,
            "create-user",
            "--org",
            org_id,
            "--name",
            "erin",
            "--email",
            "erin@acme.test",
            "--password",
            "erin-pw",
        )
    ).strip()
    assert is_id(user_id)

    code, out, err = await run_cli("admin", "--db", db_path, "create-key", "--user", user_id)
    assert code == 0, err
    key = out.strip()
    assert key.startswith("rl_")
    assert len(key) >= 40
    match = re.search(r"key id ([0-9a-f-]{36})", err)
    assert match, err
    key_id = match.group(1)

    # The running server sees the new org, user and key at once.
    _, threads = await api.request("GET", "/v1/threads", key=key, expect=200)
    assert threads == []
    _, thread = await api.request("POST", "/v1/threads", json={"title": "t"}, key=key, expect=201)
    assert thread["org_id"] == org_id
    assert thread["created_by_user_id"] == user_id
    async with api.client.post(
        "/v1/auth/login", json={"login": "erin@acme.test", "password": "erin-pw"}
    ) as r:
        assert r.status == 200
    # The key is never stored, only its hash. The file is read by another process: closing a
    # descriptor of the log in the server's own process would drop the server's SQLite locks
    # (POSIX locks belong to the process), and another process's connection could then delete
    # the -wal under it.
    look = f"import sys; sys.stdout.write(str({key.encode()!r} in open({db_path!r}, 'rb').read()))"
    code, found, err = await run_cli("-c", look, program=[sys.executable])
    assert (code, found) == (0, "False"), err

    listed = await admin(db_path, "list-keys", "--org", org_id)
    lines = listed.strip().splitlines()
    assert len(lines) == 1
    assert key_id in lines[0]
    assert f"org={org_id}" in lines[0]
    assert "user=erin" in lines[0]
    assert "active" in lines[0]
    assert key not in listed
    everyone = await admin(db_path, "list-keys")
    assert len(everyone.strip().splitlines()) == 2  # the bootstrap admin's key and erin's
    assert ADMIN_KEY not in everyone

    assert (await admin(db_path, "revoke-key", key_id)).strip() == "revoked"
    status, body = await api.request("GET", "/v1/threads", key=key)
    assert (status, body["code"]) == (401, "auth.unauthorized")
    await api.request("GET", "/v1/threads", expect=200)  # other keys are unaffected
    assert (await admin(db_path, "revoke-key", key_id)).strip() == "already revoked"
    assert "revoked" in (await admin(db_path, "list-keys", "--org", org_id))

    # The server keeps appending after the CLI did; the chain stays whole.
    _, run_id = await api.start_run("after the admin commands")
    _, readiness = await api.request("GET", "/readyz", expect=200)
    assert readiness["status"] == "ready"
    code, out, err = await run_cli(
        "verify", "--db", db_path, program=[sys.executable, "-m", "runs"]
    )
    assert code == 0, (out, err)
    assert out.startswith("ok:")
    assert "hash chain intact" in out
    await api.request("POST", f"/v1/runs/{run_id}:cancel", expect=200)


async def test_admin_errors_exit_non_zero_without_a_trace(
    aiohttp_client: Any, make_app: Callable[..., web.Application], db_path: str, tmp_path: Path
) -> None:
    api = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    missing = "01a222e0-5694-70d2-9042-2dade0db901d"
    results = await asyncio.gather(
        run_cli("admin", "--db", db_path, "create-user", "--org", missing, "--name", "x",
                "--email", "x@x"),
        run_cli("admin", "--db", db_path, "create-key", "--user", missing),
        run_cli("admin", "--db", db_path, "revoke-key", missing),
        run_cli("admin", "--db", db_path, "create-user", "--org", missing),  # --name missing
        run_cli("verify", "--db", str(tmp_path / "nothing-here.db")),
    )  # fmt: skip
    for code, out, err in results:
        assert code == 2, (code, out, err)
        assert "Traceback" not in err
        assert out == ""
    assert all("error" in err for _, _, err in results)
    # Nothing was added by the failed commands.
    keys = await api.runtime.queries.api_keys()
    assert len(keys) == 1
    code, out, _ = await run_cli("verify", "--db", db_path)
    assert code == 0
    assert out.startswith("ok:")
    assert not (tmp_path / "nothing-here.db").exists()


async def test_delete_user_stops_their_keys_at_once(
    aiohttp_client: Any, make_app: Any, db_path: str
) -> None:
    api = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    accounts = api.runtime.accounts
    org_id = await accounts.create_org("acme")
    user_id = await accounts.create_user(org_id, "bob", "bob@example.com")
    _, key = await accounts.create_key(user_id)
    await api.request("GET", "/v1/threads", key=key, expect=200)
    code = await asyncio.to_thread(cli_main, ["admin", "--db", db_path, "delete-user", user_id])
    assert code == 0
    status, body = await api.request("GET", "/v1/threads", key=key)
    assert status == 401
    assert body["code"] == "auth.unauthorized"
    code = await asyncio.to_thread(cli_main, ["admin", "--db", db_path, "delete-user", user_id])
    assert code == 2  # already deleted: a clear error, nothing written


async def test_commands_read_the_log_that_the_config_names(
    aiohttp_client: Any, make_app: Callable[..., web.Application], db_path: str, tmp_path: Path
) -> None:
    """``serve`` reads ``db`` from its config file; so does every other command."""
    api = Api(await aiohttp_client(make_app()), ADMIN_KEY)
    config = tmp_path / "runlog.toml"
    config.write_text(f'db = "{db_path}"\n', encoding="utf-8")
    org_id = (await run_cli("admin", "--config", str(config), "create-org", "--name", "cfg"))[1]
    assert is_id(org_id.strip())
    assert await api.runtime.queries.org(org_id.strip()) is not None  # the server's own log
    code, out, _ = await run_cli("verify", "--config", str(config))
    assert code == 0 and out.startswith("ok:"), out


async def test_commands_other_than_serve_refuse_a_missing_log(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    for args in (
        ["admin", "--db", str(missing), "create-org", "--name", "x"],
        ["admin", "--db", str(missing), "list-keys"],
        ["verify", "--db", str(missing)],
        ["rebuild", "--db", str(missing)],
        ["export", "--db", str(missing), "--org", "0190a0b0-c0d0-7e0f-8a0b-0c0d0e0f1a2b"],
    ):
        code, out, err = await run_cli(*args)
        assert code == 2, (args, out, err)
        assert f"no log at {missing}" in err, err
        assert "Traceback" not in err
        assert not missing.exists(), args  # nothing was created
