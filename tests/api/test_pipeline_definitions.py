"""Pipeline definitions and templates, in process: what the loader refuses, what templates give."""

from __future__ import annotations

import pytest

from taskfleet import pipelines
from taskfleet.errors import InvalidInput
from taskfleet.pipelines import DefinitionError, PipelineLoadError, parse
from taskfleet.pipelines.templates import TemplateError, TemplateSyntaxError, paths_in, render

# Every workflow the built-in pipelines use (text_to_video needs the last three).
WORKFLOWS = {"echo", "tts", "image_gen", "video_segments", "video_compose"}


def stages(*items: dict) -> dict:
    return {"name": "p", "stages": list(items)}


def test_a_placeholder_alone_keeps_its_json_type_and_inside_text_becomes_text():
    scope = {"input": {"n": 3, "words": ["a", "b"], "cfg": {"x": None}}, "stages": {}, "item": {"k": [1, 2]}, "index": 0}
    assert render("{{ input.n }}", scope) == 3
    assert render("{{input.words}}", scope) == ["a", "b"]
    assert render("{{ input.cfg.x }}", scope) is None
    assert render("{{ item.k[1] }}", scope) == 2
    assert render("n={{ input.n }}, w={{ input.words[0] }}", scope) == "n=3, w=a"
    assert render("all: {{ input.words }}", scope) == 'all: ["a","b"]'
    assert render({"a": ["{{ index }}", 5, True], "b": "x"}, scope) == {"a": [0, 5, True], "b": "x"}


@pytest.mark.parametrize("path", ["input.missing", "input.words[2]", "input.n.deeper", "stages.first.output"])
def test_a_path_that_does_not_resolve_is_a_template_error_naming_it(path):
    scope = {"input": {"n": 3, "words": ["a", "b"]}, "stages": {}}
    with pytest.raises(TemplateError) as caught:
        render("{{ %s }}" % path, scope)
    assert caught.value.path == path


@pytest.mark.parametrize(
    "template",
    ["{{ __import__('os').system('true') }}", "{{ input.n + 1 }}", "{{ input.f() }}", "{{ cfg.x }}", "{{ }}",
     "{{ input.a", "input.a }}", "{{ input[0 }}", "{{ input.a|upper }}"],
)  # fmt: skip
def test_templates_hold_paths_only_never_code(template):
    with pytest.raises(TemplateSyntaxError):
        list(paths_in(template))


def test_a_definition_in_order_defaults_after_to_the_stage_before():
    p = parse(stages(
        {"name": "a", "workflow": "echo", "input": {"data": "{{ input.x }}"}},
        {"name": "b", "workflow": "echo", "map": "{{ stages.a.output.data }}", "input": {"data": "{{ item }}"}},
        {"name": "c", "workflow": "echo", "after": [], "max_attempts": 2, "timeout_s": 5},
    ), WORKFLOWS)  # fmt: skip
    assert [s.after for s in p.stages] == [(), ("a",), ()]
    assert p.stages[1].mapped and p.stages[2].max_attempts == 2 and p.stages[2].timeout_s == 5.0
    assert p.output == "{{ stages.c.output }}"  # the last stage's output unless one is given


@pytest.mark.parametrize(
    ("definition", "fault"),
    [
        (stages({"name": "a", "workflow": "nope"}), "unknown workflow 'nope'"),
        (stages({"name": "a", "workflow": "echo", "after": ["zz"]}), "runs after 'zz', which is not a stage"),
        (stages({"name": "a", "workflow": "echo", "after": ["b"]}, {"name": "b", "workflow": "echo", "after": ["a"]}),
         "cycle: a -> b -> a"),
        (stages({"name": "a", "workflow": "echo", "input": {"data": "{{ stages.zz.output }}"}}), "unknown stage 'zz'"),
        (stages({"name": "a", "workflow": "echo"}, {"name": "b", "workflow": "echo", "after": [],
                                                    "input": {"data": "{{ stages.a.output }}"}}),
         "does not run after"),
        (stages({"name": "a", "workflow": "echo", "map": "{{ input.l }}"}, {"name": "b", "workflow": "echo",
                                                                          "input": {"d": "{{ stages.a.output }}"}}),
         "has outputs, not 'output'"),
        (stages({"name": "a", "workflow": "echo", "input": {"data": "{{ item }}"}}), "only a mapped stage"),
        (stages({"name": "a", "workflow": "echo", "input": {"data": "{{ input.x + 1 }}"}}), "bad template"),
        (stages({"name": "a", "workflow": "echo"}, {"name": "a", "workflow": "echo"}), "two stages are named 'a'"),
        (stages({"name": "a", "workflow": "echo", "retries": 3}), "unknown key 'retries'"),
        (stages({"name": "a", "workflow": "echo", "max_attempts": 0}), "max_attempts"),
        ({"name": "p", "stages": []}, "non-empty list of stages"),
        ({"name": "p", "input": {"type": "nonsense"}, "stages": [{"name": "a", "workflow": "echo"}]}, "not a valid JSON Schema"),
    ],
)  # fmt: skip
def test_bad_definitions_are_refused_with_the_fault(definition, fault):
    with pytest.raises(DefinitionError, match=fault.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        parse(definition, WORKFLOWS)


def test_input_is_checked_against_the_json_schema():
    p = parse({"name": "p", "input": {"type": "object", "required": ["words"], "properties": {"words": {"type": "array"}}},
               "stages": [{"name": "a", "workflow": "echo"}]}, WORKFLOWS)  # fmt: skip
    assert p.validate_input({"words": []}) == {"words": []}
    with pytest.raises(InvalidInput) as caught:
        p.validate_input({"words": "no"})
    assert caught.value.status == 422 and caught.value.code == "invalid_input"
    assert caught.value.details[0]["loc"] == ["input", "words"]


def test_the_schemas_top_level_defaults_fill_absent_keys_so_templates_can_name_them():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 3}, "tags": {"default": []}, "x": {}}}
    p = parse({"name": "p", "input": schema, "stages": [{"name": "a", "workflow": "echo", "input": {"data": "{{ input.n }}"}}]},
              WORKFLOWS)  # fmt: skip
    assert p.validate_input({"n": 5}) == {"n": 5, "tags": []}
    filled = p.validate_input({})
    assert filled == {"n": 3, "tags": []} and "x" not in filled
    filled["tags"].append("mine")  # the defaults are copies: one task's input never changes another's
    assert p.validate_input({})["tags"] == []


def test_the_built_in_pipeline_loads_and_a_folder_adds_its_own(tmp_path):
    assert "echo_fanout" in pipelines.load(WORKFLOWS)
    (tmp_path / "mine.yaml").write_text("name: mine\nroute: my-route\nstages:\n  - {name: a, workflow: echo}\n")
    (tmp_path / "notes.txt").write_text("not a definition")
    found = pipelines.load(WORKFLOWS, str(tmp_path))
    assert found["mine"].alias == "my-route" and found["mine"].source.endswith("mine.yaml")


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("name: x\nstages: [\n", "not valid YAML"),
        ("name: echo\nstages:\n  - {name: a, workflow: echo}\n", "name 'echo' is already taken"),
        ("name: y\nroute: echo-fanout\nstages:\n  - {name: a, workflow: echo}\n", "route 'echo-fanout' is already used"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file(tmp_path, text, fault):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(PipelineLoadError) as caught:
        pipelines.load(WORKFLOWS, str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "bad.yaml") in message and fault in message
