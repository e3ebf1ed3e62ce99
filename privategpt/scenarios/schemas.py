"""Request and response bodies of the scenario endpoints (CONTRACT section 8).

Field names keep the published snake_case spelling (`similarity_threshold`, `use_history`, ...). Single
fields are checked here; the rules that tie fields together are checked by the service on the state a
change would produce (`service.check_combination`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from privategpt.schemas import RequestModel

RetrieverType = Literal["vector_store", "document_store", "none"]
ScenarioType = Literal["official", "custom"]

NAME_MIN, NAME_MAX = 3, 40
DESCRIPTION_MIN, DESCRIPTION_MAX = 3, 128
PROMPT_MAX = 20_000

# Every editable field, in the order the API shows them.
FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "icon",
    "active",
    "creativity",
    "k",
    "similarity_threshold",
    "context_retriever_type",
    "system_pre_prompt",
    "user_pre_prompt",
    "user_post_prompt",
    "use_sparse",
    "use_dense",
    "use_reranking",
    "use_history",
)


def _check_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not NAME_MIN <= len(value) <= NAME_MAX:
        raise ValueError(f"The name must be between {NAME_MIN} and {NAME_MAX} characters.")
    return value


def _check_description(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not DESCRIPTION_MIN <= len(value) <= DESCRIPTION_MAX:
        raise ValueError(f"The description must be between {DESCRIPTION_MIN} and {DESCRIPTION_MAX} characters.")
    return value


class ScenarioCreate(RequestModel):
    """A new custom scenario; only `name` and `description` are required."""

    name: str
    description: str
    icon: str = Field("", max_length=64)
    active: bool = True
    creativity: int = Field(2, ge=1, le=4)
    k: int = Field(5, ge=1, le=20)
    similarity_threshold: float = Field(0.0, ge=0.0, le=0.9999)
    context_retriever_type: RetrieverType = "vector_store"
    system_pre_prompt: str = Field("", max_length=PROMPT_MAX)
    user_pre_prompt: str = Field("", max_length=PROMPT_MAX)
    user_post_prompt: str = Field("", max_length=PROMPT_MAX)
    use_sparse: bool = True
    use_dense: bool = True
    use_reranking: bool = False
    use_history: bool = False

    _name = field_validator("name")(_check_name)
    _description = field_validator("description")(_check_description)


class ScenarioUpdate(RequestModel):
    """Only the keys sent change; the result must satisfy every rule."""

    name: str | None = None
    description: str | None = None
    icon: str | None = Field(None, max_length=64)
    active: bool | None = None
    creativity: int | None = Field(None, ge=1, le=4)
    k: int | None = Field(None, ge=1, le=20)
    similarity_threshold: float | None = Field(None, ge=0.0, le=0.9999)
    context_retriever_type: RetrieverType | None = None
    system_pre_prompt: str | None = Field(None, max_length=PROMPT_MAX)
    user_pre_prompt: str | None = Field(None, max_length=PROMPT_MAX)
    user_post_prompt: str | None = Field(None, max_length=PROMPT_MAX)
    use_sparse: bool | None = None
    use_dense: bool | None = None
    use_reranking: bool | None = None
    use_history: bool | None = None

    _name = field_validator("name")(_check_name)
    _description = field_validator("description")(_check_description)

    @model_validator(mode="after")
    def _no_nulls(self) -> ScenarioUpdate:
        # An explicit null is not "leave unchanged"; every field of a scenario has a value.
        for key in self.model_fields_set:
            if getattr(self, key) is None:
                raise ValueError(f"The {key} field must not be null.")
        return self

    def sent(self) -> dict[str, Any]:
        """The fields present in the request, with their values."""
        return {key: getattr(self, key) for key in FIELDS if key in self.model_fields_set}


class ScenarioOut(BaseModel):
    scenarioId: str
    type: ScenarioType
    isDefault: bool = Field(description="The official scenario a chat gets when it names none.")
    name: str
    description: str
    icon: str
    active: bool
    creativity: int
    k: int
    similarity_threshold: float
    context_retriever_type: RetrieverType
    system_pre_prompt: str
    user_pre_prompt: str
    user_post_prompt: str
    use_sparse: bool
    use_dense: bool
    use_reranking: bool
    use_history: bool
    createdAt: datetime
    updatedAt: datetime


class ScenarioPage(BaseModel):
    scenarios: list[ScenarioOut]
    page: int
    perPage: int
    total: int
    lastPage: int
