"""The operator's command line: `privategpt serve | db upgrade | users ...`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from privategpt.auth.passwords import Passwords
from privategpt.config import Settings, SettingsError, load_settings
from privategpt.context import AppContext
from privategpt.db import Database
from privategpt.errors import AppError, validation_errors
from privategpt.migrate import upgrade_database
from privategpt.schemas import ROLES
from privategpt.users import service as users
from privategpt.users.schemas import UserCreate, UserUpdate


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from privategpt.app import create_app

    host = args.host or settings.host
    port = args.port or settings.port
    # Migrate here first (the app's start-up then finds nothing to do): an unreachable or wrong database is
    # then reported by main() in one line, instead of inside uvicorn as a lifespan traceback.
    asyncio.run(_upgrade(settings))
    print(
        f"PrivateGPT API on http://{host}:{port}/api/v1  (docs: http://{host}:{port}/docs)\n"
        f"Log in: curl -X POST http://{host}:{port}/api/v1/login "
        '-d \'{"email": "<admin email>", "password": "<password>"}\'',
        file=sys.stderr,
        flush=True,
    )
    workers = args.workers or settings.workers
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        "access_log": False,
        # uvicorn would otherwise believe X-Forwarded-For from any local peer, letting a client pick the
        # address that login throttling counts; PGPT_TRUST_FORWARDED_FOR is the one switch for that.
        "proxy_headers": settings.trust_forwarded_for,
    }
    if workers > 1:
        # Each worker process builds its app from the same PGPT_* environment.
        uvicorn.run("privategpt.app:create_app", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
    return 0


async def _with_context(settings: Settings, action: Callable[[AppContext], Awaitable[int]]) -> int:
    database = Database(settings)
    try:
        await upgrade_database(database.engine)
        return await action(AppContext(settings=settings, database=database, passwords=Passwords(settings)))
    finally:
        await database.dispose()


def _read_password(given: str | None, prompt: str = "Password: ") -> str:
    if given:
        return given
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Repeat: ") != first:
            raise SystemExit("Passwords do not match.")
        return first
    return sys.stdin.readline().rstrip("\n")


def _users_command(settings: Settings, args: argparse.Namespace) -> int:
    async def create(ctx: AppContext) -> int:
        data = UserCreate(
            name=args.name or args.email,
            email=args.email,
            password=_read_password(args.password),
            roles=list(ROLES) if args.admin else (args.role or []),
            groups=args.group or [],
            usePublic=args.use_public or args.admin,
            publicUpload=args.public_upload or args.admin,
        )
        async with ctx.database.session() as session:
            user = await users.create_user(session, ctx.settings, ctx.passwords, data, caller=None)
            print(f"created {user.email} roles={','.join(sorted(user.role_names)) or '-'}")
        return 0

    async def list_(ctx: AppContext) -> int:
        async with ctx.database.session(write=False) as session:
            for user in await users.list_users(session):
                state = "active" if user.is_active else "deactivated"
                print(f"{user.email}\t{user.name}\t{state}\t{','.join(sorted(user.role_names)) or '-'}")
        return 0

    async def set_password(ctx: AppContext) -> int:
        data = UserUpdate(email=args.email, password=_read_password(args.password, "New password: "))
        async with ctx.database.session() as session:
            await users.update_user(session, ctx.settings, ctx.passwords, data, caller=None)
        print(f"password changed for {args.email}; the user's tokens were revoked")
        return 0

    async def deactivate(ctx: AppContext) -> int:
        async with ctx.database.session() as session:
            await users.deactivate_user(session, args.email, caller=None)
        print(f"deactivated {args.email}")
        return 0

    actions = {"create": create, "list": list_, "set-password": set_password, "deactivate": deactivate}
    return asyncio.run(_with_context(settings, actions[args.users_command]))


async def _upgrade(settings: Settings) -> None:
    database = Database(settings)
    try:
        await upgrade_database(database.engine)
    finally:
        await database.dispose()


def _db_command(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_upgrade(settings))
    print("database is up to date")
    return 0


def _worker_command(settings: Settings, args: argparse.Namespace) -> int:
    from privategpt.worker.process import run_worker_process

    if args.concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": args.concurrency})
    return run_worker_process(settings)


def _eval_command(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from privategpt.embeddings import build_embedder
    from privategpt.rag.embedding_cache import EmbeddingCache
    from privategpt.rag.evaluation import EVAL_MODES, EvalMode, results_table, run_evaluation
    from privategpt.reranking import build_reranker

    reranker = build_reranker(settings)
    modes: list[EvalMode] = list(EVAL_MODES) if args.mode == "all" else [args.mode]
    if args.mode == "all" and reranker is None:
        modes.remove("hybrid-rerank")
    elif reranker is None and "hybrid-rerank" in modes:
        print("privategpt: the hybrid-rerank mode needs PGPT_RERANK_BASE_URL", file=sys.stderr)
        return 1
    embedder = None
    if any(mode != "sparse" for mode in modes):
        model = build_embedder(settings)
        if model is None:
            print(
                "privategpt: dense and hybrid modes need an embedding model (PGPT_EMBEDDING_BACKEND)", file=sys.stderr
            )
            return 1
        cache = Path(args.cache_dir) if args.cache_dir else settings.data_dir / "eval-cache"
        embedder = EmbeddingCache(model, cache)
    try:
        results = run_evaluation(
            args.dataset_dir,
            args.database_url,
            modes=modes,
            embedder=embedder,
            reranker=reranker,
            language=args.language,
        )
    except FileNotFoundError as exc:
        print(f"privategpt: not a BEIR data set: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
    else:
        print("\n".join(r.summary() for r in results))
        if len(results) > 1:
            print(results_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privategpt", description="PrivateGPT API v1.5 server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the API server")
    serve.add_argument("--host", help="bind address (default PGPT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PGPT_PORT or 8001)")
    serve.add_argument("--workers", type=int, help="server processes (default PGPT_WORKERS or 1)")
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply pending schema migrations")
    db.set_defaults(handler=_db_command)

    worker = commands.add_parser("worker", help="run background ingestion jobs")
    worker.add_argument("--concurrency", type=int, help="jobs at once (default PGPT_WORKER_CONCURRENCY or 2)")
    worker.set_defaults(handler=_worker_command)

    evaluate = commands.add_parser(
        "eval", help="nDCG@10 and Recall@100 of the retrieval core on a BEIR-format data set"
    )
    evaluate.add_argument("dataset_dir", help="corpus.jsonl[.gz], queries[.test].jsonl, qrels/test.tsv")
    evaluate.add_argument(
        "--database-url", help="index into a fresh database on this PostgreSQL server (default: a temporary SQLite)"
    )
    evaluate.add_argument("--language", default="en", help="language of the analyser (default en)")
    evaluate.add_argument(
        "--mode",
        choices=["sparse", "dense", "hybrid", "hybrid-rerank", "all"],
        default="sparse",
        help="retrieval mode, or all of them on one index (dense modes use PGPT_EMBEDDING_*, reranking PGPT_RERANK_*)",
    )
    evaluate.add_argument(
        "--cache-dir", help="where passage and query vectors are cached (default PGPT_DATA_DIR/eval-cache)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.set_defaults(handler=_eval_command)

    user_parser = commands.add_parser("users", help="manage users")
    user_commands = user_parser.add_subparsers(dest="users_command", required=True)
    create = user_commands.add_parser("create", help="create a user")
    create.add_argument("--email", required=True)
    create.add_argument("--name")
    create.add_argument("--password", help="read from the terminal or stdin when omitted")
    create.add_argument("--role", action="append", choices=ROLES, help="repeatable")
    create.add_argument("--group", action="append", help="existing group, repeatable")
    create.add_argument("--use-public", action="store_true")
    create.add_argument("--public-upload", action="store_true")
    create.add_argument("--admin", action="store_true", help="every role, usePublic and publicUpload")
    user_commands.add_parser("list", help="list users")
    set_password = user_commands.add_parser("set-password", help="set a user's password")
    set_password.add_argument("email")
    set_password.add_argument("--password", help="read from the terminal or stdin when omitted")
    deactivate = user_commands.add_parser("deactivate", help="deactivate a user")
    deactivate.add_argument("email")
    user_parser.set_defaults(handler=_users_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"privategpt: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    try:
        return handler(settings, args)
    except AppError as exc:
        print(f"privategpt: {exc.message}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        # The API's messages, one per field; pydantic's own text would echo the input, a password included.
        _, errors = validation_errors(exc.errors())
        for field, messages in errors.items():
            for message in messages:
                print(f"privategpt: {field}: {message}", file=sys.stderr)
        return 1
    except (OSError, DBAPIError) as exc:
        # An unreachable or misconfigured database is an operator's problem to fix, not a crash to debug.
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        print(f"privategpt: cannot use the database: {type(reason).__name__}: {reason}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"privategpt: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
