"""Scenario management (role `scenarios`); any user may still use a scenario in a chat."""

from __future__ import annotations

import math

from fastapi import APIRouter, Path, Query, Request

from privategpt.auth.dependencies import ScenariosAdmin
from privategpt.context import client_address
from privategpt.errors import envelope
from privategpt.scenarios import service
from privategpt.scenarios.schemas import ScenarioCreate, ScenarioOut, ScenarioPage, ScenarioUpdate
from privategpt.schemas import Empty, Envelope
from privategpt.unit_of_work import DbSession, UnitOfWorkRoute

router = APIRouter(prefix="/scenarios", tags=["scenarios"], route_class=UnitOfWorkRoute)

ScenarioId = Path(description="The scenarioId")


@router.get("", response_model=Envelope[ScenarioPage], summary="List scenarios, official ones first")
async def list_scenarios(
    session: DbSession,
    caller: ScenariosAdmin,
    page: int = Query(1, ge=1, le=1_000_000),
    perPage: int = Query(20, ge=1, le=100),
) -> dict[str, object]:
    listing = await service.list_scenarios(session, page=page, per_page=perPage)
    return envelope(
        ScenarioPage(
            scenarios=[service.to_out(s) for s in listing.scenarios],
            page=page,
            perPage=perPage,
            total=listing.total,
            lastPage=max(1, math.ceil(listing.total / perPage)),
        )
    )


@router.get("/{scenario_id}", response_model=Envelope[ScenarioOut], summary="One scenario (extension)")
async def get_scenario(session: DbSession, caller: ScenariosAdmin, scenario_id: str = ScenarioId) -> dict[str, object]:
    return envelope(service.to_out(await service.get_scenario(session, scenario_id)))


@router.post("", response_model=Envelope[ScenarioOut], summary="Create a custom scenario")
async def create_scenario(
    body: ScenarioCreate, request: Request, session: DbSession, caller: ScenariosAdmin
) -> dict[str, object]:
    scenario = await service.create_scenario(session, body, caller=caller, client=client_address(request))
    return envelope(service.to_out(scenario))


@router.patch(
    "/{scenario_id}",
    response_model=Envelope[ScenarioOut],
    summary="Edit a scenario; official ones accept only `active`",
)
async def update_scenario(
    body: ScenarioUpdate,
    request: Request,
    session: DbSession,
    caller: ScenariosAdmin,
    scenario_id: str = ScenarioId,
) -> dict[str, object]:
    scenario = await service.update_scenario(session, scenario_id, body, caller=caller, client=client_address(request))
    return envelope(service.to_out(scenario))


@router.delete("/{scenario_id}", response_model=Envelope[Empty], summary="Delete a custom scenario")
async def delete_scenario(
    request: Request, session: DbSession, caller: ScenariosAdmin, scenario_id: str = ScenarioId
) -> dict[str, object]:
    await service.delete_scenario(session, scenario_id, caller=caller, client=client_address(request))
    return envelope({})
