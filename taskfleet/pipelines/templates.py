"""Pipeline templates: ``{{ path }}`` placeholders resolved by a small path evaluator.

Nothing in a template runs as code. A path is a dotted name with ``[n]`` indexes
(``stages.first.output.items[0].text``) looked up in a scope of plain JSON values. A string that
is exactly one placeholder becomes the value itself, with its JSON type; a placeholder inside a
longer string is interpolated as text (JSON for lists and objects).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
ROOTS = ("input", "stages", "item", "index")


class TemplateSyntaxError(ValueError):
    """A template that cannot be read: found when the definition is loaded."""


class TemplateError(LookupError):
    """A path that does not resolve in this pipeline's data: fails the pipeline."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Path:
    text: str
    steps: tuple[str | int, ...]  # names and list indexes, in order

    @property
    def root(self) -> str:
        return str(self.steps[0])


def parse_path(text: str) -> Path:
    text = text.strip()
    steps: list[str | int] = []
    pos = 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None or (pos == 0 and match.group(0).startswith((".", "["))):
            raise TemplateSyntaxError(f"{{{{ {text} }}}} is not a path (dotted names and [n] only)")
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not steps:
        raise TemplateSyntaxError("empty {{ }}")
    if steps[0] not in ROOTS:
        raise TemplateSyntaxError(f"{{{{ {text} }}}} starts with {steps[0]!r}; a path starts with one of {', '.join(ROOTS)}")
    return Path(text, tuple(steps))


def paths_in(template: Any) -> Iterator[Path]:
    """Every path in a template (a JSON value whose strings may hold placeholders)."""
    if isinstance(template, str):
        rest = _PLACEHOLDER.sub("", template)
        if "{{" in rest or "}}" in rest:
            raise TemplateSyntaxError(f"unbalanced braces in {template!r}")
        for match in _PLACEHOLDER.finditer(template):
            yield parse_path(match.group(1))
    elif isinstance(template, list):
        for value in template:
            yield from paths_in(value)
    elif isinstance(template, dict):
        for key, value in template.items():
            if "{{" in key:
                raise TemplateSyntaxError(f"a placeholder in the key {key!r}: only values are templates")
            yield from paths_in(value)


def resolve(path: Path, scope: dict[str, Any]) -> Any:
    value: Any = scope
    walked = ""
    for step in path.steps:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                raise TemplateError(path.text, f"{walked or 'value'} has no item [{step}]")
            value = value[step]
            walked += f"[{step}]"
        else:
            if not isinstance(value, dict) or step not in value:
                raise TemplateError(path.text, f"{walked or 'scope'} has no {step!r}")
            value = value[step]
            walked += f".{step}" if walked else step
    return value


def render(template: Any, scope: dict[str, Any]) -> Any:
    """The template with every placeholder replaced from ``scope``; raises TemplateError."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template.strip()) if template.strip().startswith("{{") else None
        if whole is not None and whole.group(0).count("{{") == 1:
            return resolve(parse_path(whole.group(1)), scope)
        return _PLACEHOLDER.sub(lambda m: _as_text(resolve(parse_path(m.group(1)), scope)), template)
    if isinstance(template, list):
        return [render(value, scope) for value in template]
    if isinstance(template, dict):
        return {key: render(value, scope) for key, value in template.items()}
    return template


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
