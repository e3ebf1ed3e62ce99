"""Chats, their messages with cited sources, and scenarios with the official ones seeded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 04:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed ids: the official scenarios are the same on every installation, so clients may hard-code them.
DEFAULT_SCENARIO_ID = "00000000-0000-4000-8000-000000000001"
GENERAL_SCENARIO_ID = "00000000-0000-4000-8000-000000000002"
WHOLE_DOCUMENT_SCENARIO_ID = "00000000-0000-4000-8000-000000000003"

# The RAG prompts also serve chats that search nothing (no groups, no public documents): the contract
# says those are answered from general knowledge.
_DOCUMENTS_PROMPT = (
    "You are PrivateGPT, an assistant that answers questions from the documents of the user's organisation. "
    "When numbered passages from the documents are given, base your answer on them and cite the ones you use "
    "by their number in square brackets; if they do not contain the answer, say so instead of making one up. "
    "When no passages are given, answer from general knowledge."
)
_GENERAL_PROMPT = (
    "You are PrivateGPT, a helpful assistant. Answer from your general knowledge, clearly and concisely. "
    "If you are not sure of something, say so."
)
_WHOLE_DOCUMENT_PROMPT = (
    "You are PrivateGPT, an assistant that works with whole documents: summarising, comparing and answering "
    "questions about them. When numbered documents are given, use only them and cite them by their number in "
    "square brackets; if they do not contain what is asked, say so. When no documents are given, answer from "
    "general knowledge."
)


def _official_scenarios() -> list[dict[str, object]]:
    now = datetime.now(UTC)
    common = {
        "icon": "",
        "active": True,
        "type": "official",
        "user_pre_prompt": "",
        "user_post_prompt": "",
        "use_reranking": False,
        "created_by_id": None,
        "created_at": now,
        "updated_at": now,
    }
    return [
        {
            **common,
            "id": DEFAULT_SCENARIO_ID,
            "name": "Document search",
            "name_key": "document search",
            "description": "Answers from your documents with hybrid retrieval, citing the passages it used.",
            "icon": "ph-files",
            "is_default": True,
            "creativity": 1,
            "k": 6,
            "similarity_threshold": 0.0,
            "context_retriever_type": "vector_store",
            "system_pre_prompt": _DOCUMENTS_PROMPT,
            "use_sparse": True,
            "use_dense": True,
            "use_history": False,
        },
        {
            **common,
            "id": GENERAL_SCENARIO_ID,
            "name": "General knowledge",
            "name_key": "general knowledge",
            "description": "A general assistant without documents, which remembers the conversation.",
            "icon": "ph-globe",
            "is_default": False,
            "creativity": 2,
            "k": 5,
            "similarity_threshold": 0.0,
            "context_retriever_type": "none",
            "system_pre_prompt": _GENERAL_PROMPT,
            "use_sparse": True,
            "use_dense": True,
            "use_history": True,
        },
        {
            **common,
            "id": WHOLE_DOCUMENT_SCENARIO_ID,
            "name": "Whole documents",
            "name_key": "whole documents",
            "description": "Gives the model the best-matching documents in full, for summaries and comparisons.",
            "icon": "ph-file-text",
            "is_default": False,
            "creativity": 1,
            "k": 3,
            "similarity_threshold": 0.0,
            "context_retriever_type": "document_store",
            "system_pre_prompt": _WHOLE_DOCUMENT_PROMPT,
            "use_sparse": True,
            "use_dense": True,
            "use_history": False,
        },
    ]


def upgrade() -> None:
    scenarios = op.create_table(
        "scenarios",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("name_key", sa.String(length=160), nullable=False),
        sa.Column("description", sa.String(length=128), nullable=False),
        sa.Column("icon", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("creativity", sa.Integer(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("similarity_threshold", sa.Float(), nullable=False),
        sa.Column("context_retriever_type", sa.String(length=16), nullable=False),
        sa.Column("system_pre_prompt", sa.Text(), nullable=False),
        sa.Column("user_pre_prompt", sa.Text(), nullable=False),
        sa.Column("user_post_prompt", sa.Text(), nullable=False),
        sa.Column("use_sparse", sa.Boolean(), nullable=False),
        sa.Column("use_dense", sa.Boolean(), nullable=False),
        sa.Column("use_reranking", sa.Boolean(), nullable=False),
        sa.Column("use_history", sa.Boolean(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_scenarios_created_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scenarios")),
        sa.UniqueConstraint("name_key", name=op.f("uq_scenarios_name_key")),
    )
    op.create_table(
        "chats",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("use_public", sa.Boolean(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("scenario_id", sa.String(length=36), nullable=True),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["scenario_id"], ["scenarios.id"], name=op.f("fk_chats_scenario_id_scenarios"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_chats_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chats")),
    )
    with op.batch_alter_table("chats", schema=None) as batch_op:
        batch_op.create_index("ix_chats_user_id_created_at", ["user_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_chats_scenario_id"), ["scenario_id"], unique=False)

    op.create_table(
        "chat_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("context_source_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["chat_id"], ["chats.id"], name=op.f("fk_chat_messages_chat_id_chats"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_messages")),
        sa.UniqueConstraint("chat_id", "position", name="uq_chat_messages_chat_id_position"),
    )

    op.bulk_insert(scenarios, _official_scenarios())


def downgrade() -> None:
    op.drop_table("chat_messages")
    with op.batch_alter_table("chats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chats_scenario_id"))
        batch_op.drop_index("ix_chats_user_id_created_at")
    op.drop_table("chats")
    op.drop_table("scenarios")
