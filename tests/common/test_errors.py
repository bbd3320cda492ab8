"""Validation errors as OpenAI-shaped 400s: ``param`` is a path in the request, whatever pydantic puts in a location."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ValidationError

from common.errors import from_validation_error


class Named(BaseModel):
    type: Literal["function"]
    function: dict[str, str]


class Body(BaseModel):
    choice: Literal["auto", "none"] | Named
    choices: list[Literal["auto"] | Named] = []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"choice": {"type": "function"}}, "choice.function"),
        ({"choice": {"type": "function", "function": {"name": 1}}}, "choice.function.name"),
        ({"choice": "auto", "choices": ["auto", {"type": "other", "function": {}}]}, "choices[1].type"),
    ],
)
def test_a_union_branchs_class_name_is_not_part_of_the_param(body: dict[str, object], param: str) -> None:
    """pydantic tags a union's model branch with its class name (``choice.Named.function``): never a request path."""
    with pytest.raises(ValidationError) as info:
        Body.model_validate(body)
    assert any("Named" in err["loc"] for err in info.value.errors())  # the tag is there to be dropped
    err = from_validation_error(info.value)
    assert err.status == 400 and err.param == param and "Named" not in err.message
