"""Hops to aiosqlite's thread per chat question on SQLite: new chats and continued ones.

Every statement, BEGIN and COMMIT that reaches SQLite goes through aiosqlite's thread, and each hop wakes that
thread and then the event loop; under load that costs more than the statements. This counts the hops
(`aiosqlite.Connection._execute` calls) of questions asked over HTTP to an in-process server on a
fresh database, BM25 only, the LLM being the suite's fake server. A count, not a timing: it does not depend on
the machine's load.

    python bench/bench_sqlite_hops.py

To compare two versions of the code, run it with PYTHONPATH pointing at each checkout in turn.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiosqlite

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # the suite's fixtures (after PYTHONPATH, which may name another checkout)

QUESTIONS = 20
_hops = 0
_execute = aiosqlite.Connection._execute


async def _counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
    global _hops
    _hops += 1
    return await _execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]


def main() -> None:
    global _hops
    aiosqlite.Connection._execute = _counted  # type: ignore[method-assign]

    import privategpt
    from privategpt.config import Settings
    from tests.chats.helpers import add_source
    from tests.fixtures.llm_server import FakeLLM
    from tests.fixtures.servers import TEST_SETTINGS, Api, migrate, running_server

    llm = FakeLLM()
    llm.start()
    workdir = Path(tempfile.mkdtemp(prefix="pgpt-hops-"))
    settings = Settings(
        data_dir=workdir,
        database_url=f"sqlite:///{workdir / 'privategpt.db'}",
        llm_base_url=llm.url,
        llm_model="bench-model",
        **TEST_SETTINGS,
    )
    assert settings.database_url is not None
    migrate(settings.database_url)
    try:
        with running_server(settings) as server:
            api = Api(server.base_url)
            admin = api.admin_token()
            api.create_group("biology")
            add_source(api, admin, "Cells", "Cells divide by mitosis. " * 20, ["biology"])
            chat = api.post("/chats", admin, json={"question": "How do cells divide?", "groups": ["biology"]})
            chat_id = chat.json()["data"]["chatId"]
            api.patch(f"/chats/{chat_id}", admin, json={"question": "And then?"})  # warm-up
            _hops = 0
            for i in range(QUESTIONS):
                body = {"question": f"What about mitosis, {i}?", "groups": ["biology"]}
                api.post("/chats", admin, json=body).raise_for_status()
            new = _hops / QUESTIONS
            _hops = 0
            for i in range(QUESTIONS):
                api.patch(f"/chats/{chat_id}", admin, json={"question": f"And mitosis, {i}?"}).raise_for_status()
            continued = _hops / QUESTIONS
    finally:
        llm.stop()
    code = str(Path(privategpt.__file__).resolve().parent.parent)
    print(json.dumps({"code": code, "hops_per_new_question": new, "hops_per_continued_question": continued}))


if __name__ == "__main__":
    main()
