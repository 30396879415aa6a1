"""The ``runlog`` command line: serve (the default), admin, head, verify, rebuild, export, tail,
copy, backup.

Every command that changes something appends events through the event store, so it is safe
to run while the server runs on the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from eventstore import EventStoreError, describe, is_postgres_url, log_exists, open_event_store
from projections import all_projections
from runs.anchors import load_public_key, parse_expect, read_checkpoints
from runs.audit import export_events, run_copy, run_head, run_rebuild, run_verify
from runs.config import Config, load_config
from runs.errors import RunsError

# Each command imports what it uses when it runs: `runlog verify` never loads the HTTP stack,
# and `--version` loads nothing (README.md, "Deploy": start-up time).

__all__ = ["build_parser", "main"]

COMMANDS = ("serve", "admin", "head", "verify", "rebuild", "export", "tail", "copy", "backup")
ADMIN_COMMANDS = (
    "create-org",
    "create-user",
    "delete-user",
    "create-key",
    "list-keys",
    "revoke-key",
)


_DB_HELP = (
    "the log: a SQLite file or a postgresql:// URL (default: RUNLOG_DB, the config's db,"
    " or ./runlog.db)"
)
_CONFIG_HELP = "TOML config file (or RUNLOG_CONFIG); its db is used when --db is not given"


def _log_options(parser: argparse.ArgumentParser) -> None:
    """Every command that opens the log finds it the way ``serve`` does."""
    parser.add_argument("--db", default=None, help=_DB_HELP)
    parser.add_argument("--config", default=None, help=_CONFIG_HELP)


class _VersionAction(argparse.Action):
    """``--version``, worked out only when asked for (from source it runs git)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and commit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from runs.version import version_line

        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runlog", description="AI agent runs on an append-only, hash-chained event log."
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the HTTP service (the default command)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8001)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, kept up by a parent (PostgreSQL only; default 1)",
    )
    _log_options(serve)

    admin = sub.add_parser("admin", help="manage orgs, users and API keys")
    _log_options(admin)
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    org = admin_sub.add_parser("create-org", help="create an org; prints its id")
    org.add_argument("--name", required=True)
    user = admin_sub.add_parser("create-user", help="create a user; prints its id")
    user.add_argument("--org", required=True, help="org id")
    user.add_argument("--name", required=True)
    user.add_argument("--email", required=True)
    user.add_argument("--password", help="lets the user log in with POST /v1/auth/login")
    delete = admin_sub.add_parser("delete-user", help="delete a user (keys and tokens stop)")
    delete.add_argument("user_id")
    key = admin_sub.add_parser("create-key", help="create an API key; prints it (only time)")
    key.add_argument("--user", required=True, help="user id")
    keys = admin_sub.add_parser("list-keys", help="list API keys (never the keys themselves)")
    keys.add_argument("--org", help="only this org's keys")
    revoke = admin_sub.add_parser("revoke-key", help="revoke an API key by its id")
    revoke.add_argument("key_id")

    head = sub.add_parser("head", help="print the log's head as 'position hash' (an anchor)")
    _log_options(head)

    verify = sub.add_parser("verify", help="check the log's hash chain, positions and seqs")
    _log_options(verify)
    verify.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="POSITION:HASH",
        help="an anchor the log must still hold (from runlog head); repeatable",
    )
    verify.add_argument(
        "--checkpoints", metavar="FILE", help="signed checkpoints (JSON lines) to check"
    )
    verify.add_argument(
        "--public-key", metavar="KEY", help="the checkpoint key's Ed25519 public key (PEM)"
    )

    rebuild = sub.add_parser("rebuild", help="rebuild every projection from the log")
    _log_options(rebuild)
    rebuild.add_argument(
        "--check", action="store_true", help="rebuild into scratch tables and report differences"
    )
    rebuild.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        help="processes that replay the log (SQLite): 1, or 2 to use two cores; by default 2"
        " on a log of 16 MiB or more on Linux with two cores",
    )

    export = sub.add_parser("export", help="events of a run, thread or org as JSON lines")
    _log_options(export)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run id")
    which.add_argument("--thread", help="thread id (with its runs)")
    which.add_argument("--org", help="org id (its org, thread and run streams)")

    tail_cmd = sub.add_parser("tail", help="follow a run live over SSE")
    tail_cmd.add_argument("run_id")
    tail_cmd.add_argument(
        "--url", default=os.environ.get("RUNLOG_URL", "http://127.0.0.1:8001"), help="server URL"
    )
    tail_cmd.add_argument("--token", help="API key or access token (or RUNLOG_TOKEN)")

    copy = sub.add_parser("copy", help="copy a whole log to an empty database (any backend)")
    copy.add_argument("--from", dest="source", required=True, help="source path or URL")
    copy.add_argument("--to", dest="target", required=True, help="empty target path or URL")

    backup = sub.add_parser("backup", help="a consistent, verified copy of a live SQLite log")
    _log_options(backup)
    backup.add_argument("--to", required=True, help="the copy's path (must not exist)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    # Starting the server allocates many objects that live as long as the process (modules,
    # the app, the store): the cyclic garbage collector is held off until it listens
    # (``python -m runs`` holds it off from its first import), then those objects are frozen
    # out of its reach (``_serve``). Other commands run with it on.
    if args.command == "serve":
        gc.disable()
    else:
        gc.enable()
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "admin":
            return _run(admin(args))
        if args.command in ("head", "verify", "rebuild", "export"):
            return audit(args)
        if args.command == "copy":
            return copy(args)
        if args.command == "backup":
            return backup(args)
        if args.command == "tail":
            token = args.token or os.environ.get("RUNLOG_TOKEN", "")
            if not token:
                print("error: give --token or set RUNLOG_TOKEN", file=sys.stderr)
                return 2
            from runs.tail import tail

            return _run(tail(args.url, token, args.run_id))
    except RunsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except EventStoreError as exc:
        # The log cannot be opened or written (an unreachable server, a read-only location,
        # a cut tail, a schema from a newer runlog): one line.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        gc.enable()
    build_parser().print_help()
    return 2


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def run_server(coro: Coroutine[Any, Any, int]) -> int:
    """Run a server's coroutine on uvloop's event loop instead of asyncio's own.

    The same code runs on either (the tests run the app on asyncio's); uvloop's loop and
    transports are written in Cython over libuv, and a run costs the server fewer
    instructions on it: bench/instructions.py counted 12% fewer at one client and 4% fewer
    at twenty."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# -- serve ------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    config = load_config(
        args.config, overrides={"host": args.host, "port": args.port, "db": args.db}
    )
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and not is_postgres_url(config.db):
        print(
            f"error: --workers {args.workers} needs a PostgreSQL log (--db postgresql://...):"
            " on a SQLite file one server process serves the log",
            file=sys.stderr,
        )
        return 2
    from runs.client_tls import import_aiohttp

    # Before anything imports aiohttp: its client's CA store is read at the first outbound
    # HTTPS request, not at every start (runs/client_tls.py).
    import_aiohttp()
    from runs.logs import configure_logging

    configure_logging()
    if args.workers == 1:
        return run_server(_serve(config))
    gc.enable()  # the supervisor of the workers runs for as long as they do
    from runs.version import version_line
    from runs.workers import serve_workers

    url = f"http://{config.host}:{config.port}"

    def banner(key: str | None) -> None:
        print(version_line(), flush=True)
        print(f"runlog: {args.workers} workers on {url} (log: {describe(config.db)})", flush=True)
        if key:
            _print_bootstrap_key(url, key)

    def serve_one(index: int) -> int:
        return run_server(_serve(config, reuse_port=True, worker=index))

    return serve_workers(config, args.workers, serve_one, banner)


def _print_bootstrap_key(url: str, key: str) -> None:
    print(
        "First start: created org 'default' and user 'admin'.\n"
        f"API key: {key}\n"
        "It is shown only once. Try:\n"
        f"  curl -s -X POST {url}/v1/threads -H 'Authorization: Bearer"
        f" {key}' -H 'Content-Type: application/json'"
        ' -d \'{"title": "hello"}\'',
        flush=True,
    )


async def _serve(
    config: Config,
    *,
    reuse_port: bool = False,
    worker: int | None = None,
) -> int:
    from aiohttp import web

    from server import RUNTIME, create_app

    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=config.shutdown_timeout_seconds,
        # aiohttp arms this timer when a connection opens and after each response, and closes
        # a connection still without a complete request when it fires: it is the limit for
        # sending headers (slow-loris). The body's limit is in ``server.read_body``.
        keepalive_timeout=config.request_read_timeout_seconds,
    )
    await runner.setup()
    # With --workers every worker binds the same address: SO_REUSEPORT lets the kernel spread
    # new connections over them.
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None)
    await site.start()
    # What start-up made lives as long as the process: the collector no longer walks it. And
    # a collection every 10,000 new objects instead of 700: each one walks what the runs in
    # flight hold, so at 20 concurrent runs they were 2% of the event loop's instructions
    # (bench/instructions.py --clients 20: -1.8% per run). Unreachable cycles, and what they
    # hold, wait for 10,000 allocations instead of 700: under load, a few more milliseconds.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    gc.enable()
    runtime = app[RUNTIME]
    url = f"http://{config.host}:{config.port}"
    if worker is None:
        from runs.version import version_line

        print(version_line(), flush=True)
        print(f"runlog listening on {url} (log: {describe(config.db)})", flush=True)
    else:
        print(f"runlog worker {worker} (pid {os.getpid()}) listening on {url}", flush=True)
    if runtime.bootstrap_key:
        _print_bootstrap_key(url, runtime.bootstrap_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("runlog: shutting down", flush=True)
    await runner.cleanup()
    return 0


# -- admin ------------------------------------------------------------------------------------


class MissingLog(RunsError):
    """A command other than ``serve`` was pointed at a log that does not exist."""

    code = "internal.config"


def existing_log(args: argparse.Namespace) -> str:
    """The log a command should open, found like ``serve`` finds it (``--db``, then
    ``RUNLOG_DB``, then the config file's ``db``, then ``./runlog.db``). Only ``serve`` creates a
    log: any other command refuses a missing one, so a key is never created in a new, empty
    file that the server does not read."""
    location = load_config(args.config, overrides={"db": args.db}).db
    if not log_exists(location):
        raise MissingLog(
            f"no log at {describe(location)} (runlog serve creates it; give --db or --config to"
            " name an existing one)"
        )
    return location


async def admin(args: argparse.Namespace) -> int:
    from runs.service import Accounts

    store = await open_event_store(existing_log(args), all_projections())
    try:
        accounts = Accounts(store)
        command = args.admin_command
        if command == "create-org":
            print(await accounts.create_org(args.name))
        elif command == "create-user":
            print(await accounts.create_user(args.org, args.name, args.email, args.password))
        elif command == "delete-user":
            await accounts.delete_user(args.user_id)
            print("deleted")
        elif command == "create-key":
            key_id, key = await accounts.create_key(args.user)
            print(key)
            print(f"(key id {key_id}; the key is shown only this once)", file=sys.stderr)
        elif command == "list-keys":
            for row in await accounts.queries.api_keys(args.org):
                status = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
                print(
                    f"{row['key_id']}  org={row['org_id']}  user={row['user_name']}"
                    f"  created={row['created_at']}  {status}"
                )
        elif command == "revoke-key":
            changed = await accounts.revoke_key(args.key_id)
            print("revoked" if changed else "already revoked")
    finally:
        await store.close()
    return 0


# -- audit ------------------------------------------------------------------------------------


def verify(path: str, args: argparse.Namespace) -> int:
    expected: dict[int, str] = {}
    errors: list[str] = []
    for text in args.expect:
        try:
            position, hash_ = parse_expect(text)
        except ValueError as exc:
            print(f"error: --expect {exc}", file=sys.stderr)
            return 2
        expected[position] = hash_
    if bool(args.checkpoints) != bool(args.public_key):
        print("error: --checkpoints and --public-key go together", file=sys.stderr)
        return 2
    if args.checkpoints:
        anchors, errors = read_checkpoints(args.checkpoints, load_public_key(args.public_key))
        for position, hash_ in anchors.items():
            if expected.get(position, hash_) != hash_:
                errors.append(f"position {position}: --expect and a checkpoint disagree")
            expected[position] = hash_
    return run_verify(path, sys.stdout, expected, errors)


def audit(args: argparse.Namespace) -> int:

    path = existing_log(args)
    try:
        if args.command == "head":
            return run_head(path, sys.stdout)
        if args.command == "verify":
            return verify(path, args)
        if args.command == "rebuild":
            return run_rebuild(path, args.check, sys.stdout, args.jobs)
        for line in export_events(path, run=args.run, thread=args.thread, org=args.org):
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        return 0
    except EventStoreError as exc:
        print(f"error: {describe(path)}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A driver error (sqlite3, psycopg) from a damaged or unreachable database.
        print(f"error: cannot read {describe(path)}: {exc}", file=sys.stderr)
        return 2


def copy(args: argparse.Namespace) -> int:

    try:
        if not log_exists(args.source):
            print(f"error: no log at {describe(args.source)}", file=sys.stderr)
            return 2
        return run_copy(args.source, args.target, sys.stdout)
    except EventStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# -- backup -----------------------------------------------------------------------------------


def backup(args: argparse.Namespace) -> int:
    from runs.backup import is_database_url, run_backup

    location = load_config(args.config, overrides={"db": args.db}).db
    if not is_database_url(location):
        location = existing_log(args)
    return run_backup(location, args.to, sys.stdout, sys.stderr)
