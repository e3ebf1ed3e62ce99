"""Scenarios: listing, custom ones created/edited/deleted, official ones only (de)activated.

Every change is validated on the state it would produce, so a rule that ties two fields together (history
only without retrieval; a store retriever needs sparse or dense search) cannot be dodged by changing the
fields one request at a time. Services only flush; the request's unit of work commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import ColumnElement, Float, case, func, or_, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import NullType

from privategpt.audit import service as audit
from privategpt.auth.principal import Principal
from privategpt.errors import Conflict, Forbidden, NotFound, ValidationFailed
from privategpt.models import Scenario, utcnow
from privategpt.scenarios.schemas import FIELDS, ScenarioCreate, ScenarioOut, ScenarioUpdate

NOT_FOUND = "Scenario not found."
OFFICIAL_ONLY_ACTIVE = "Official scenarios can only be activated or deactivated."
STORE_RETRIEVERS = frozenset({"vector_store", "document_store"})


def name_key(name: str) -> str:
    return name.strip().casefold()


def to_out(scenario: Scenario) -> ScenarioOut:
    return ScenarioOut(
        scenarioId=scenario.id,
        type=scenario.type,
        isDefault=scenario.is_default,
        name=scenario.name,
        description=scenario.description,
        icon=scenario.icon,
        active=scenario.active,
        creativity=scenario.creativity,
        k=scenario.k,
        similarity_threshold=scenario.similarity_threshold,
        context_retriever_type=scenario.context_retriever_type,
        system_pre_prompt=scenario.system_pre_prompt,
        user_pre_prompt=scenario.user_pre_prompt,
        user_post_prompt=scenario.user_post_prompt,
        use_sparse=scenario.use_sparse,
        use_dense=scenario.use_dense,
        use_reranking=scenario.use_reranking,
        use_history=scenario.use_history,
        createdAt=scenario.created_at,
        updatedAt=scenario.updated_at,
    )


def check_combination(state: dict[str, Any]) -> None:
    """The rules of CONTRACT section 8 that involve several fields, on a scenario's complete state."""
    retriever = state["context_retriever_type"]
    if state["use_history"] and retriever != "none":
        raise ValidationFailed(
            "use_history",
            'use_history can only be enabled with context_retriever_type "none"; '
            "set use_history to false when choosing a document retriever.",
        )
    if retriever in STORE_RETRIEVERS and not state["use_sparse"] and not state["use_dense"]:
        message = "A document retriever needs use_sparse or use_dense (or both) to be true."
        error = ValidationFailed("use_sparse", message)
        error.errors = {"use_sparse": [message], "use_dense": [message]}
        raise error


async def _check_name_free(session: AsyncSession, name: str, *, except_id: str | None = None) -> None:
    conditions = [Scenario.name_key == name_key(name)]
    if except_id is not None:
        conditions.append(Scenario.id != except_id)
    if await session.scalar(select(Scenario.id).where(*conditions)) is not None:
        raise Conflict(
            "A scenario with this name already exists.", errors={"name": ["The name has already been taken."]}
        )


async def _flush_unique(session: AsyncSession) -> None:
    try:
        await session.flush()
    except IntegrityError:
        # A concurrent request took the name between the check and the write.
        raise Conflict("A scenario with this name already exists.") from None


@dataclass(frozen=True)
class ScenarioListing:
    scenarios: list[Scenario]
    total: int


async def list_scenarios(session: AsyncSession, *, page: int, per_page: int) -> ScenarioListing:
    """Official scenarios first (the default one leading), then custom ones, oldest first."""
    total = await session.scalar(select(func.count()).select_from(Scenario)) or 0
    rows = await session.scalars(
        select(Scenario)
        .order_by(
            case((Scenario.type == "official", 0), else_=1),
            Scenario.is_default.desc(),
            Scenario.created_at,
            Scenario.id,
        )
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return ScenarioListing(scenarios=list(rows), total=total)


async def get_scenario(session: AsyncSession, scenario_id: str, *, lock: bool = False) -> Scenario:
    statement = select(Scenario).where(Scenario.id == scenario_id)
    if lock:
        statement = statement.with_for_update()
    scenario = await session.scalar(statement)
    if scenario is None:
        raise NotFound(NOT_FOUND)
    return scenario


async def create_scenario(
    session: AsyncSession, body: ScenarioCreate, *, caller: Principal, client: str | None
) -> Scenario:
    """Create a custom scenario."""
    state = body.model_dump()
    check_combination(state)
    await _check_name_free(session, body.name)
    scenario = Scenario(
        **state, name_key=name_key(body.name), type="custom", is_default=False, created_by_id=caller.user.id
    )
    session.add(scenario)
    await _flush_unique(session)
    await audit.record(
        session,
        actor=caller.user,
        action="scenario.create",
        target_type="scenario",
        target=scenario.id,
        fields=[key for key in FIELDS if key in body.model_fields_set] or ["name", "description"],
        client=client,
    )
    return scenario


async def update_scenario(
    session: AsyncSession, scenario_id: str, body: ScenarioUpdate, *, caller: Principal, client: str | None
) -> Scenario:
    """Apply the keys sent; official scenarios accept a change of `active` only (403 otherwise)."""
    scenario = await get_scenario(session, scenario_id, lock=True)
    changes = {key: value for key, value in body.sent().items() if getattr(scenario, key) != value}
    if scenario.type == "official" and set(changes) - {"active"}:
        raise Forbidden(OFFICIAL_ONLY_ACTIVE)
    if not changes:
        return scenario
    state = {key: getattr(scenario, key) for key in FIELDS} | changes
    check_combination(state)
    if "name" in changes:
        await _check_name_free(session, changes["name"], except_id=scenario.id)
        scenario.name_key = name_key(changes["name"])
    for key, value in changes.items():
        setattr(scenario, key, value)
    scenario.updated_at = utcnow()
    await _flush_unique(session)
    await audit.record(
        session,
        actor=caller.user,
        action="scenario.update",
        target_type="scenario",
        target=scenario.id,
        fields=list(changes),
        client=client,
    )
    return scenario


async def delete_scenario(session: AsyncSession, scenario_id: str, *, caller: Principal, client: str | None) -> None:
    """Delete a custom scenario; its chats continue on the default one."""
    scenario = await get_scenario(session, scenario_id, lock=True)
    if scenario.type == "official":
        raise Forbidden("Official scenarios cannot be deleted; deactivate them instead.")
    await session.delete(scenario)
    await session.flush()
    await audit.record(
        session,
        actor=caller.user,
        action="scenario.delete",
        target_type="scenario",
        target=scenario_id,
        fields=["scenarioId"],
        client=client,
    )


_DEFAULT_MISSING = "The default scenario is missing; run `privategpt db upgrade`."


@dataclass(frozen=True)
class ChatScenario:
    """What a question needs of its scenario: plain values read in the chat's one round trip (not an ORM
    object, whose loading cost more than the query on a chat's hot path)."""

    id: str
    active: bool
    is_default: bool
    creativity: int
    k: int
    similarity_threshold: float
    context_retriever_type: str
    system_pre_prompt: str
    user_pre_prompt: str
    user_post_prompt: str
    use_sparse: bool
    use_dense: bool
    use_reranking: bool
    use_history: bool


_SCENARIOS = Scenario.__table__


def _plain(name: str) -> ColumnElement[Any]:
    column = _SCENARIOS.c[name]
    # Both drivers return floats as floats; asyncpg's Float result processor needs the wire type, which
    # `db.DriverQuery` does not know.
    return type_coerce(column, NullType()).label(name) if isinstance(column.type, Float) else column


# The columns of `ChatScenario`, in its order, for a statement that reads them beside others.
CHAT_SCENARIO_COLUMNS = tuple(_plain(f.name) for f in fields(ChatScenario))


def chat_scenario_choices(scenario_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """The rows a chat chooses its scenario among: the one it names (`scenario_id`) and the default one."""
    return or_(_SCENARIOS.c.id == scenario_id, _SCENARIOS.c.is_default.is_(True))


def _chosen(rows: Sequence[Sequence[Any]], scenario_id: str | None) -> tuple[ChatScenario | None, ChatScenario]:
    """The named scenario (if among `rows`) and the default one, from rows starting with the columns above."""
    width = len(CHAT_SCENARIO_COLUMNS)
    scenarios = [ChatScenario(*row[:width]) for row in rows]
    default = next((s for s in scenarios if s.is_default), None)
    if default is None:
        raise RuntimeError(_DEFAULT_MISSING)
    named = next((s for s in scenarios if scenario_id is not None and s.id == scenario_id), None)
    return named, default


def scenario_for_new_chat(rows: Sequence[Sequence[Any]], scenario_id: str | None) -> ChatScenario:
    """The scenario a new chat asks for (any user may use any active one), or the default one; from the
    rows `chat_scenario_choices(scenario_id)` selected."""
    named, default = _chosen(rows, scenario_id)
    if scenario_id is None:
        return default
    if named is None:
        raise ValidationFailed("scenarioId", "The selected scenario does not exist.")
    if not named.active:
        raise ValidationFailed("scenarioId", "The selected scenario is not active.")
    return named


def scenario_of_chat(rows: Sequence[Sequence[Any]], scenario_id: str | None) -> ChatScenario:
    """The scenario an existing chat continues with: its own, or the default one if it was deleted."""
    named, default = _chosen(rows, scenario_id)
    return named or default
