"""The request bodies of the API as pydantic models: they validate and they make the schema.

Each field's ``mode="before"`` validator applies the service's own check (:mod:`xmr.serve.limits`)
and raises its :class:`~xmr.serve.limits.ApiError` (which pydantic lets through unchanged), so
a bad field gets the same machine-readable code (``bad_k``, ``k_too_large``, ...) whether it came
in a query string, a JSON body or a form. The limits and the index's categories come in the
validation context: ``Model.model_validate(data, context=ValidationContext(...))``. The OpenAPI
schema of ``POST /api/search`` and ``POST /api/items`` is generated from these classes
(:func:`request_body_doc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from xmr.serve.limits import (
    ApiError,
    ServeSettings,
    check_category,
    check_k,
    check_query,
    parse_rerank,
    parse_rerank_k,
)


@dataclass
class ValidationContext:
    """What the validators check against: the service's limits and the index's categories."""

    settings: ServeSettings
    categories: Mapping[str, int] = field(default_factory=dict)


def _context(info: ValidationInfo) -> ValidationContext:
    ctx = info.context
    if not isinstance(ctx, ValidationContext):
        raise TypeError("validate requests with context=ValidationContext(settings, categories)")
    return ctx


class _Request(BaseModel):
    # validate_default: the validators also give an absent field its value (k -> default_k).
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @classmethod
    def parse(cls, data: Mapping[str, Any], context: ValidationContext, *, ignore=()) -> Any:
        """Validate ``data``; an unknown field is a 400 ``unknown_field`` naming them all."""
        unknown = set(data) - set(cls.model_fields) - set(ignore)
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
        return cls.model_validate(
            {k: v for k, v in data.items() if k not in ignore}, context=context
        )


class _QueryOptions(_Request):
    k: int | None = Field(None, ge=1, description="How many results (1..max_k; default_k).")
    category: str | None = Field(None, description="Only items of this category.")
    rerank: bool | None = Field(
        None,
        description="Rerank with the service's cross-encoder (default: on when the service has "
        "one). Forms and query strings take true/false, 1/0, yes/no, on/off.",
    )
    rerank_k: int | None = Field(
        None,
        ge=1,
        description="Rescore only this many first-stage results (at most the service's "
        "rerank_k); asks for reranking.",
    )

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value: Any, info: ValidationInfo) -> int:
        return check_k(value, _context(info).settings)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any, info: ValidationInfo) -> str | None:
        return check_category(value, _context(info).categories)

    @field_validator("rerank", mode="before")
    @classmethod
    def _rerank(cls, value: Any) -> bool | None:
        return parse_rerank(value)

    @field_validator("rerank_k", mode="before")
    @classmethod
    def _rerank_k(cls, value: Any) -> int | None:
        return parse_rerank_k(value)


class SearchRequest(_QueryOptions):
    """A text query (``q``) or a query by the example of an indexed item (``item_id``), as a
    JSON body of ``POST /api/search`` or the query string of ``GET /api/search``."""

    q: str | None = Field(None, description="The query text.")
    item_id: str | None = Field(None, description="Search by this indexed item's vector.")

    @field_validator("q", mode="before")
    @classmethod
    def _q(cls, value: Any, info: ValidationInfo) -> str | None:
        return check_query(value, _context(info).settings, required=False)

    @field_validator("item_id", mode="before")
    @classmethod
    def _item_id(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ApiError(404, "unknown_item", f"no item with id {value!r}", field="item_id")
        return value

    @classmethod
    def parse(cls, data: Mapping[str, Any], context: ValidationContext, *, ignore=()) -> Any:
        if data.get("item_id") is not None and data.get("q") not in (None, ""):
            raise ApiError(400, "ambiguous_query", "send either q or item_id, not both")
        request = super().parse(data, context, ignore=ignore)
        if request.item_id is None:
            # Required when there is no example: the missing/empty/blank query messages.
            check_query(data.get("q"), context.settings)
        return request


class ImageSearchForm(_QueryOptions):
    """A query by image: a ``multipart/form-data`` upload to ``POST /api/search``."""

    image: bytes = Field(description="The image file (JPEG, PNG, WebP, GIF, BMP, TIFF, ...).")

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise ApiError(400, "bad_upload", "the form has no image file field 'image'")
        if not value:
            raise ApiError(400, "bad_upload", "the uploaded image is empty", field="image")
        return value


class AddItemForm(_Request):
    """An image to add to the index: a ``multipart/form-data`` upload to ``POST /api/items``."""

    image: bytes = Field(description="The image file.")
    id: str = Field(description="The new item's id (1-200 printable characters, unique).")
    caption: str | None = Field(None, description="A caption (searchable by rerankers).")
    category: str | None = Field(None, description="The item's category.")

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> bytes:
        return ImageSearchForm._image(value)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        item_id = value.strip() if isinstance(value, str) else ""
        if not item_id or len(item_id) > 200 or not item_id.isprintable():
            raise ApiError(400, "bad_id", "the form needs an 'id' (1-200 printable characters)")
        return item_id

    @field_validator("caption", mode="before")
    @classmethod
    def _caption(cls, value: Any, info: ValidationInfo) -> str | None:
        caption = value.strip() if isinstance(value, str) else ""
        if len(caption) > _context(info).settings.max_query_chars:
            raise ApiError(400, "caption_too_long", "the caption is too long", field="caption")
        return caption or None

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: Any) -> str | None:
        return (value.strip() if isinstance(value, str) else "") or None


def request_body_doc(description: str, content: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """An ``openapi_extra`` request body with one generated schema per content type (for routes
    that read their body themselves, to apply size limits before parsing it)."""
    return {
        "requestBody": {
            "description": description,
            "required": True,
            "content": {
                media: {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")
                }
                for media, model in content.items()
            },
        }
    }
