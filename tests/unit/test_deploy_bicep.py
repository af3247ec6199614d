"""The Bicep templates: every resource checked strictly against its ARM resource schema.

No Bicep compiler installs from the package registries here, so `tests.support.bicep`
reads the templates and each deployed resource, as the compiler would emit it (values
known only at deployment become ARM expressions, `[...]`), is validated against the
Azure Resource Manager JSON schema of its type and API version (an extract pinned in
`deploy/validate/arm-schemas.json`), with unknown properties refused. Names used in
expressions must be declared; the APIM pieces must agree with the policy that uses them.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from orchestrator.core.settings import Settings
from tests.support.bicep import BicepSyntaxError, Expr, Resource, Template, parse

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TEMPLATES = sorted(DEPLOY.rglob("*.bicep"))
POLICY = DEPLOY / "apim" / "ptu-priority-policy.xml"
BICEP_ONLY = ("parent", "scope", "dependsOn")
_EXPRESSION = {"$ref": "#/definitions/__expression"}
_BUILTINS = {"true", "false", "null", "in", "if", "for"}


@cache
def schemas() -> dict[str, Any]:
    resources: dict[str, Any] = json.loads((DEPLOY / "validate" / "arm-schemas.json").read_text())[
        "resources"
    ]
    return resources


def _strict(node: Any) -> Any:
    """The schema with undeclared properties refused wherever properties are declared."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("properties", "definitions", "patternProperties"):
        if isinstance(node.get(key), dict):
            out[key] = {name: _strict(sub) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = _strict(node[key])
    for key in ("oneOf", "anyOf", "allOf", "items"):
        if isinstance(node.get(key), list):
            out[key] = [_strict(sub) for sub in node[key]]
    if _EXPRESSION in node.get("oneOf", []):
        # "a literal or an expression": an expression string may match the literal too
        out["anyOf"] = out.pop("oneOf")
    if isinstance(node.get("properties"), dict):
        out.setdefault("additionalProperties", False)
    return out


def _arm(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, Expr):
        if value.text in variables:
            return _arm(variables[value.text], variables)
        return f"[{value.text}]"
    if isinstance(value, dict):
        return {k: _arm(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_arm(v, variables) for v in value]
    if isinstance(value, tuple):
        raise AssertionError("a loop inside a resource body")
    return value


def arm_resource(resource: Resource, template: Template) -> dict[str, Any]:
    """The resource as the compiler would emit it into the ARM template."""
    body = {k: v for k, v in resource.body.items() if k not in BICEP_ONLY}
    out: dict[str, Any] = {"type": resource.type, "apiVersion": resource.api_version}
    out.update(_arm(body, template.variables))
    if "parent" in resource.body:  # as emitted: `<parent>/<child>`, a literal when both are,
        # else the expression `[format('{0}/{1}', ...)]` the compiler writes
        parent = _full_name(resource.body["parent"].text, template)
        own = out["name"]
        literal = parent is not None and not own.startswith("[")
        out["name"] = f"{parent}/{own}" if literal else "[format('{0}/{1}', parent, child)]"
    return out


def _full_name(symbol: str, template: Template) -> str | None:
    """The parent's full name when it is known before deployment, else None."""
    (parent,) = [r for r in template.resources if r.symbol == symbol]
    name = parent.body["name"]
    if not isinstance(name, str):
        return None
    if "parent" in parent.body:
        above = _full_name(parent.body["parent"].text, template)
        return None if above is None else f"{above}/{name}"
    return name


def schema_errors(resource: Resource, template: Template) -> list[str]:
    key = f"{resource.type}@{resource.api_version}"
    schema = schemas().get(key)
    if schema is None:
        return [f"{key}: no ARM schema for this type and API version"]
    if resource.existing:
        return []
    assert not schema.get("existingOnly"), f"{key} is deployed: pin its schema"
    validator = jsonschema_rs.Draft4Validator(_strict(schema))
    instance = arm_resource(resource, template)
    return [f"{key} {e.instance_path}: {e.message}" for e in validator.iter_errors(instance)]


def _names_used(text: str) -> set[str]:
    """Identifiers an expression refers to: outside strings, or inside `${...}`."""
    code = []
    for part in re.split(r"('(?:[^'\\]|\\.)*')", text):
        if part.startswith("'"):
            code.extend(re.findall(r"\$\{([^}]*)\}", part))
        else:
            code.append(part)
    names = set()
    for chunk in code:
        for match in re.finditer(r"(?<![.\w])([A-Za-z_]\w*)\b(?!\s*\()", chunk):
            names.add(match.group(1))
    return names - _BUILTINS


def _exprs(value: Any) -> list[Expr]:
    if isinstance(value, Expr):
        return [value]
    if isinstance(value, dict):
        return [e for v in value.values() for e in _exprs(v)]
    if isinstance(value, list | tuple):
        return [e for v in value for e in _exprs(v)]
    return []


@pytest.fixture(params=TEMPLATES, ids=lambda p: str(p.relative_to(DEPLOY)))
def template(request: pytest.FixtureRequest) -> Template:
    return parse(request.param.read_text())


def test_every_template_is_found_and_read() -> None:
    assert {p.name for p in TEMPLATES} >= {"main.bicep", "backends.bicep"}
    with pytest.raises(BicepSyntaxError):
        parse("resource x 'Microsoft.Foo/bars@2024-01-01' = {\n  name: 'a'\n")
    with pytest.raises(BicepSyntaxError):
        parse("module m './other.bicep' = {}")


def test_resources_match_their_arm_schemas(template: Template) -> None:
    assert template.resources
    errors = [e for r in template.resources for e in schema_errors(r, template)]
    assert errors == []


def test_every_name_in_an_expression_is_declared(template: Template) -> None:
    declared = set(template.params) | set(template.variables)
    declared |= {r.symbol for r in template.resources}
    for resource in template.resources:
        local = set()
        if resource.loop is not None:
            local.add(resource.loop.split()[1])  # `for name in list`
        for expr in _exprs(resource.body):
            assert _names_used(expr.text) <= declared | local, (resource.symbol, expr.text)
        if resource.condition is not None:
            assert _names_used(resource.condition) <= declared, resource.symbol
    for name, (_, value) in (template.outputs | template.params).items():
        for expr in _exprs(value):
            assert _names_used(expr.text) <= declared, (name, expr.text)


def test_the_check_refuses_made_up_properties_and_versions() -> None:
    template = parse((DEPLOY / "apim" / "backends.bicep").read_text())
    ptu = next(r for r in template.resources if r.symbol == "ptu")
    wrong = copy.deepcopy(ptu)
    wrong.body["properties"]["ptuBackendCircuitBreaker"] = {"rules": []}
    assert any("ptuBackendCircuitBreaker" in e for e in schema_errors(wrong, template))
    typed = copy.deepcopy(ptu)
    typed.body["properties"]["protocol"] = "https"
    assert schema_errors(typed, template)
    old = copy.deepcopy(ptu)
    old.api_version = "2019-01-01"
    assert schema_errors(old, template) == [
        "Microsoft.ApiManagement/service/backends@2019-01-01: no ARM schema for this type "
        "and API version"
    ]


def _apim() -> dict[str, Resource]:
    template = parse((DEPLOY / "apim" / "backends.bicep").read_text())
    return {r.symbol: r for r in template.resources} | {"__vars__": template.variables}  # type: ignore[dict-item]


def test_apim_pool_puts_the_ptu_first_and_the_breaker_honours_retry_after() -> None:
    apim = _apim()
    variables: dict[str, Any] = apim["__vars__"]  # type: ignore[assignment]
    pool = apim["pool"].body["properties"]
    assert pool["type"] == "Pool"
    services = {s["id"].text: s["priority"] for s in pool["pool"]["services"]}
    assert services == {"ptu.id": 1, "payg.id": 2}
    for symbol in ("ptu", "payg"):
        props = apim[symbol].body["properties"]
        assert props["url"].text.endswith("/openai'")
        breaker = _arm(props["circuitBreaker"], variables)
        (rule,) = breaker["rules"]  # APIM supports one rule per backend
        assert rule["acceptRetryAfter"] is True
        assert {"min": 429, "max": 429} in rule["failureCondition"]["statusCodeRanges"]


def _policy() -> ET.Element:
    return ET.parse(POLICY).getroot()  # well-formed XML: deployed with format 'xml'


def test_apim_policy_names_what_the_template_creates() -> None:
    apim = _apim()
    policy = apim["policy"].body["properties"]
    assert policy["format"] == "xml"
    assert policy["value"].text == "loadTextContent('ptu-priority-policy.xml')"
    root = _policy()
    backends = {e.get("backend-id") for e in root.iter("set-backend-service")} - {None}
    assert backends == {apim["pool"].body["name"]}
    urls = {e.get("base-url") for e in root.iter("set-backend-service")} - {None}
    # the API's `/openai` suffix is kept: the ingress routes on it
    assert urls == {"{{" + apim["ingress"].body["name"] + "}}/openai"}
    named = {m for e in root.iter("value") for m in re.findall(r"\{\{([\w-]+)\}\}", e.text or "")}
    assert named == {apim["frontSecretValue"].body["name"]}
    assert apim["frontSecretValue"].body["properties"]["secret"] is True
    loggers = {e.get("logger-id") for e in root.iter("log-to-eventhub")}
    assert loggers == {apim["tokenEvents"].body["name"]}


def test_apim_policy_never_parses_a_streamed_response() -> None:
    root = _policy()
    (forward,) = root.iter("forward-request")
    assert forward.get("buffer-response") == "false"
    (stream_flag,) = [e for e in root.iter("set-variable") if e.get("name") == "ptuStream"]
    assert '["stream"]' in (stream_flag.get("value") or "")
    parents = {child: parent for parent in root.iter() for child in parent}
    readers = [e for e in root.iter() if "context.Response.Body" in (e.text or "") + str(e.attrib)]
    assert readers, "the token event reads the response body"
    for element in readers:
        guard = element
        while guard.tag != "when":
            guard = parents[guard]
        condition = guard.get("condition") or ""
        assert 'context.Variables["ptuStream"]' in condition
        assert "text/event-stream" in condition


def _main() -> tuple[Template, dict[str, Resource]]:
    template = parse((DEPLOY / "bicep" / "main.bicep").read_text())
    return template, {r.symbol: r for r in template.resources}


def test_redis_persists_every_second_and_takes_entra_id_only() -> None:
    template, resources = _main()
    database = resources["redisDatabase"]
    props = database.body["properties"]
    assert props["persistence"] == {"aofEnabled": True, "aofFrequency": "1s"}
    assert props["evictionPolicy"] == "NoEviction"  # the queue and the records are not a cache
    assert props["accessKeysAuthentication"] == "Disabled"
    user = resources["redisUser"].body
    assert user["parent"].text == "redisDatabase"
    assert user["properties"]["user"]["objectId"].text == "identity.properties.principalId"
    weekly = copy.deepcopy(database)
    weekly.body["properties"]["persistence"]["aofFrequency"] = "5s"
    assert schema_errors(weekly, template)


def test_files_have_their_container_and_the_identity_may_write_it() -> None:
    _, resources = _main()
    files = resources["filesContainer"].body
    assert files["name"] == Settings.model_fields["blob_container"].default
    assert files["parent"].text == "blobs"
    writer = resources["checkpointWriter"].body
    assert writer["scope"].text == "checkpoints"  # the account that holds both containers
    assert "storageBlobDataContributor" in writer["properties"]["roleDefinitionId"].text
