"""The documentation stays in step with the code.

* every field of ``common.settings.Settings`` (and of every model nested in it) is in
  docs/configuration.md under its full key (``cascade.risk.alpha``, ``stages[i].launch.gpus``), and
  every field that has an environment variable of its own is named with it
  (``ADAPTIVE_SD_CASCADE__RISK__ALPHA``);
* the layer diagram in docs/architecture.md lists the import-linter layers of pyproject.toml in order;
* every relative link in README.md and docs/*.md points to a file that exists, and a ``#fragment``
  to a heading of that file.
"""

from __future__ import annotations

import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
ENV_PREFIX = "ADAPTIVE_SD_"

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target) and ![alt](target)
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)  # [label]: target
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


# -- settings fields --------------------------------------------------------------------------


def _models_in(annotation: object) -> Iterator[tuple[type[BaseModel], bool]]:
    """The pydantic models an annotation holds (through unions, ``Annotated``, lists), each with whether it sits in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
        return
    in_list = typing.get_origin(annotation) in (list, tuple, set, frozenset)
    for arg in typing.get_args(annotation):
        for model, nested_in_list in _models_in(arg):
            yield model, in_list or nested_in_list


def settings_fields(model: type[BaseModel] = Settings, prefix: str = "", env: str | None = ENV_PREFIX) -> Iterator[tuple[str, str | None]]:
    """(full key, environment variable or None) for every field of ``model`` and of the models nested in it.

    A list of models is written ``key[i]``; the fields inside a list have no environment variable of
    their own (the list is replaced whole, as JSON).
    """
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        var = f"{env}{name.upper()}" if env is not None else None
        yield key, var
        for nested, in_list in _models_in(field.annotation):
            if in_list:
                yield from settings_fields(nested, f"{key}[i].", None)
            else:
                yield from settings_fields(nested, f"{key}.", f"{var}__" if var is not None else None)


def _unique(items: Iterator[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    return list(dict.fromkeys(items))


FIELDS = _unique(settings_fields())


def test_the_walk_sees_nested_and_listed_models() -> None:
    keys = {k for k, _ in FIELDS}
    assert {"server.port", "cascade.risk.alpha", "predictor.baseline[i].slope", "stages[i].launch.weights", "stages[i].launch.gpus"} <= keys
    assert ("cascade.risk.evidence", "ADAPTIVE_SD_CASCADE__RISK__EVIDENCE") in FIELDS
    assert ("stages[i].url", None) in FIELDS


@pytest.mark.parametrize(("key", "var"), FIELDS, ids=[k for k, _ in FIELDS])
def test_every_settings_field_is_documented(key: str, var: str | None) -> None:
    text = CONFIGURATION.read_text()
    assert f"`{key}`" in text, f"docs/configuration.md does not document `{key}`"
    if var is not None and "." in key:
        assert f"`{var}`" in text, f"docs/configuration.md does not name the environment variable of `{key}`: `{var}`"


# -- the layer diagram ------------------------------------------------------------------------


def _contract_layers() -> list[list[str]]:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    assert len(contracts) == 1, "expected one layers contract"
    return [[p.strip() for p in layer.split("|")] for layer in contracts[0]["layers"]]


def test_the_layer_diagram_follows_the_import_contract() -> None:
    """Each box row of the diagram names its packages first in each cell: ``│ router  ... │ servers  ... │``."""
    text = (DOCS / "architecture.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    diagram = section.split("```", 2)[1].splitlines()
    rows = [[cell.split()[0] for cell in line.split("│")[1:-1] if cell.strip()] for line in diagram if "│" in line]
    assert [sorted(r) for r in rows] == [sorted(layer) for layer in _contract_layers()]


# -- links ------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(page: Path) -> list[str]:
    text = _INLINE_CODE.sub("", _FENCE.sub("", page.read_text()))
    return _LINK.findall(text) + _REFERENCE.findall(text)


LINKS = [(page, target) for page in PAGES for target in _links(page) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def test_there_are_pages_and_links() -> None:
    assert CONFIGURATION.exists() and len(PAGES) > 2
    assert len(LINKS) > 10


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS])
def test_relative_links_resolve(page: Path, target: str) -> None:
    path, _, fragment = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target} -- no such file"
    assert dest.is_relative_to(ROOT), f"{page.relative_to(ROOT)}: link to {target} leaves the repository"
    if fragment and dest.suffix == ".md":
        assert fragment in _anchors(dest), f"{page.relative_to(ROOT)}: link to {target} -- no such heading in {dest.name}"
