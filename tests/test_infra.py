"""The Bicep sets what the app reads, grants what it calls, and holds no key.

No Bicep compiler can be installed here, so these tests read the templates as text: the app
settings objects entry by entry (expressions become placeholders, parameters their defaults),
the role assignments by their built-in role ids. The strongest check feeds the settings the
Bicep deploys to `Settings.from_env`, the same parser the app runs at start-up.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = (INFRA / "main.bicep").read_text(encoding="utf-8")
FUNCTION_APP = (INFRA / "app" / "function-app.bicep").read_text(encoding="utf-8")
RBAC = (INFRA / "app" / "rbac.bicep").read_text(encoding="utf-8")
OPENAI_ACCESS = (INFRA / "app" / "openai-access.bicep").read_text(encoding="utf-8")
FLEX = json.loads((INFRA / "app" / "flex-consumption.json").read_text(encoding="utf-8"))
HOST = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
ALL_BICEP = "\n".join(p.read_text(encoding="utf-8") for p in sorted(INFRA.rglob("*.bicep")))

# Built-in role definition ids (the same in every tenant), checked against Azure's built-in
# roles list and the Azure Functions samples' rbac.bicep.
ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
}

# Settings whose value only exists once Azure has created the resource they name.
EXPRESSION_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__clientId",
    "AZURE_CLIENT_ID",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "AZURE_OPENAI_ENDPOINT",
}
PLACEHOLDER = "https://placeholder.invalid"
# What Azure puts in a setting whose form the app checks, where a URL is not that form.
PLACEHOLDERS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
    "IngestionEndpoint=https://placeholder.invalid/",
}


def strip_comment(line: str) -> str:
    """Drop a `//` comment, but not `//` inside a quoted string (URLs)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == "'":
            quoted = not quoted
        elif not quoted and line.startswith("//", i):
            return line[:i]
    return line


def object_body(text: str, opening: str) -> list[str]:
    """The top-level lines of the `{ ... }` that follows `opening`, comments removed."""
    start = text.index(opening) + len(opening)
    assert text[start - 1] == "{", f"{opening!r} does not open an object"
    depth, lines, current = 1, [], ""
    for line in text[start:].splitlines():
        code = strip_comment(line)
        for ch in code:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                break
        if depth == 0:
            break
        current += code + "\n"
    for line in current.splitlines():
        if line.strip():
            lines.append(line.strip())
    return lines


def declared_default(name: str, text: str) -> str | None:
    """The literal default of `param name type = X` or `var name = X`, as a string."""
    match = re.search(rf"^(?:param {name} \w+|var {name}) = (.+)$", text, re.M)
    if match is None:
        return None
    value = match.group(1).strip()
    if re.fullmatch(r"'[^'$]*'", value):
        return value[1:-1]
    if re.fullmatch(r"\d+", value):
        return value
    return None


def resolve(expression: str, text: str) -> str | None:
    """A Bicep value as the app would see it, or None when only Azure knows it."""
    if re.fullmatch(r"'[^'$]*'", expression):
        return expression[1:-1]
    inner = re.fullmatch(r"string\((\w+)\)", expression)
    name = inner.group(1) if inner else expression
    if re.fullmatch(r"\w+", name):
        return declared_default(name, text)
    return None


def settings_object(text: str, opening: str) -> dict[str, str | None]:
    entries: dict[str, str | None] = {}
    for line in object_body(text, opening):
        match = re.fullmatch(r"(\w+)\s*:\s*(.+)", line)
        assert match, f"unexpected line in {opening}: {line!r}"
        entries[match.group(1)] = resolve(match.group(2), text)
    return entries


def deployed_settings() -> dict[str, str | None]:
    """The processor app's settings: the shared ones, then its own (union order)."""
    settings = settings_object(FUNCTION_APP, "var baseAppSettings = {")
    settings.update(settings_object(MAIN, "var processorAppSettings = {"))
    return settings


def test_the_app_starts_with_the_settings_the_bicep_deploys() -> None:
    deployed = deployed_settings()
    unresolved = {name for name, value in deployed.items() if value is None}
    assert unresolved == EXPRESSION_SETTINGS, "a literal setting was not read, or a new expression"
    env = {
        name: PLACEHOLDERS.get(name, PLACEHOLDER) if value is None else value
        for name, value in deployed.items()
    }

    settings = Settings.from_env(env)
    assert settings.appinsights_connection_string is not None, "telemetry goes to App Insights"

    assert settings.storage.uses_identity
    assert settings.storage.blob_service_uri == PLACEHOLDER
    assert settings.storage.queue_service_uri == PLACEHOLDER
    (deployment,) = settings.deployments
    assert deployment.api_key is None, "Entra ID, not a key"
    assert deployment.deployment == declared_default("openAiDeploymentName", MAIN)
    assert str(deployment.rpm) == declared_default("openAiRpm", MAIN)
    assert settings.quota_scope == "shared", "several instances draw on one quota"
    assert env["AZURE_OPENAI_MODEL"] == "gpt-image-2"
    assert env["AzureWebJobsStorage__credential"] == "managedidentity"


def test_the_managed_identity_is_the_one_every_client_uses() -> None:
    body = "\n".join(object_body(FUNCTION_APP, "var baseAppSettings = {"))
    for name in ("AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID"):
        assert re.search(rf"^{name}: identityClientId$", body, re.M), name
    assert "ClientId=${identityClientId};Authorization=AAD" in body
    assert "userAssignedResourceIds: [\n        identityId" in FUNCTION_APP
    assert "systemAssigned: false" in FUNCTION_APP


def test_no_setting_or_template_carries_a_key() -> None:
    for name in deployed_settings():
        assert not re.search(r"KEY|SECRET|PASSWORD|SAS", name, re.I), name
        assert name != "AzureWebJobsStorage", "a plain AzureWebJobsStorage is a connection string"
    for forbidden in ("AccountKey", "listKeys(", "listkeys(", "SharedAccessSignature", "API_KEY"):
        assert forbidden not in ALL_BICEP, forbidden
    assert "allowSharedKeyAccess: false" in MAIN
    assert "disableLocalAuth: true // ingestion needs an Entra token" in MAIN
    assert "disableLocalAuth: true // Entra ID only" in MAIN


def test_failover_entries_cannot_name_a_key() -> None:
    declaration = MAIN[MAIN.index("@sealed()\ntype failoverDeployment = {") :]
    fields = set(re.findall(r"^  (\w+): ", declaration.split("\n}\n")[0], re.M))
    assert fields == {"name", "endpoint", "deployment", "priority", "rpm"}
    assert "param failoverDeployments failoverDeployment[] = []" in MAIN
    entry = {field: "https://x.invalid" for field in ("name", "endpoint", "deployment")}
    entries = [{**entry, "name": "primary", "priority": 0, "rpm": 10}]
    entries.append({**entry, "name": "failover", "priority": 1, "rpm": 10})
    env = {
        "AzureWebJobsStorage__accountName": "st",
        "AZURE_OPENAI_DEPLOYMENTS": json.dumps(entries),
    }
    assert [d.api_key for d in Settings.from_env(env).deployments] == [None, None]
    assert (
        "AZURE_OPENAI_DEPLOYMENTS: string(concat([primaryDeployment], failoverDeployments))" in MAIN
    )


def test_each_role_the_code_needs_is_assigned_to_the_app_identity_and_the_user() -> None:
    for role in list(ROLES)[:4]:
        assert re.search(rf"'{ROLES[role]}' // {role}\b", RBAC), role
    assert f"var openAiUserRoleId = '{ROLES['Cognitive Services OpenAI User']}'" in OPENAI_ACCESS
    assert "for roleId in storageRoleIds" in RBAC
    assert (
        "roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)"
        in RBAC
    )
    assert "scope: openAi\n" in OPENAI_ACCESS
    for module, path in (("processorRoles", "rbac"), ("processorOpenAiAccess", "openai-access")):
        block = MAIN[MAIN.index(f"module {module} 'app/{path}.bicep'") :].split("\n}\n")[0]
        assert "principalId: processorIdentity.outputs.principalId" in block, module
        assert "principalType: 'ServicePrincipal'" in block, module
    for module, path in (("userRoles", "rbac"), ("userOpenAiAccess", "openai-access")):
        block = MAIN[MAIN.index(f"module {module} 'app/{path}.bicep'") :].split("\n}\n")[0]
        assert "if (!empty(principalId))" in block and "principalId: principalId" in block, module
        assert "principalType: 'User'" in block, module
    assert "identityId: processorIdentity.outputs.resourceId" in MAIN


def test_flex_consumption_fc1_python_311() -> None:
    assert "name: 'FC1'\n      tier: 'FlexConsumption'" in FUNCTION_APP
    config = FLEX["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert "loadJsonContent('flex-consumption.json').functionAppConfig" in FUNCTION_APP
    assert "runtime: flex.runtime" in FUNCTION_APP
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    from azure_functions_doctor.handlers.deployment import FLEX_DEPRECATED_APP_SETTINGS

    assert not set(FLEX_DEPRECATED_APP_SETTINGS) & set(deployed_settings())


def test_sizing_matches_host_json_and_the_quota() -> None:
    queues = HOST["extensions"]["queues"]
    per_instance = queues["batchSize"] + queues["newBatchThreshold"]
    threads = int(declared_default("pythonThreadpoolThreadCount", MAIN) or 0)
    assert threads >= per_instance, "a message without a thread holds its slot and does nothing"
    rpm = int(declared_default("openAiRpm", MAIN) or 0)
    in_flight = math.ceil(rpm / 60 * 245)  # Little's law at ~245 s per 2048x2048 high call
    instances = int(declared_default("maximumInstanceCount", MAIN) or 0)
    assert instances * per_instance >= in_flight
    assert int(declared_default("instanceMemoryMB", MAIN) or 0) == 2048


def test_queues_and_containers_the_app_uses_exist() -> None:
    env = {k: v for k, v in deployed_settings().items() if v is not None}
    app = (ROOT / "function_app.py").read_text(encoding="utf-8")
    queue_names = [
        re.sub(r"%(\w+)%", lambda m: env[m.group(1)], name)
        for name in re.findall(r'queue_name="([^"]+)"', app)
    ]
    assert queue_names == ["image-requests", "image-requests-poison"]
    queues = object_body(MAIN, "queueServices: {")
    for name, declared in (
        ("image-requests", "{ name: requestsQueue }"),
        ("image-requests-poison", "{ name: '${requestsQueue}-poison' }"),
    ):
        assert declared in queues, name
    assert declared_default("requestsQueue", MAIN) == "image-requests"
    containers = "\n".join(object_body(MAIN, "blobServices: {"))
    for setting, var in (
        ("IMAGES_CONTAINER", "imagesContainer"),
        ("IMAGE_INPUT_CONTAINERS", "inputsContainer"),
        ("IMAGE_QUOTA_CONTAINER", "quotaContainer"),
    ):
        assert env[setting] == declared_default(var, MAIN)
        assert f"{{ name: {var}, publicAccess: 'None' }}" in containers, setting
    for container in ("processorPackageContainer", "downstreamPackageContainer"):
        assert f"{{ name: {container}, publicAccess: 'None' }}" in containers, container


def test_the_downstream_subscription_hook() -> None:
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    run = re.search(r"postdeploy:\n(?:.*\n)*?\s+run: (\S+)", azure_yaml)
    assert run, "azure.yaml has no postdeploy hook"
    script = ROOT / run.group(1)
    assert script.is_file() and script.stat().st_mode & 0o111
    text = script.read_text(encoding="utf-8")
    assert "systemKeys.blobs_extension" in text
    assert "functionName=Host.Functions.${FUNCTION_NAME}" in text
    assert 'FUNCTION_NAME="${DOWNSTREAM_FUNCTION_NAME:-on_manifest}"' in text
    assert '--subject-ends-with "/manifest.json"' in text
    assert "--included-event-types Microsoft.Storage.BlobCreated" in text
    assert "--output none" in text, "the webhook URL carries the key"
    for output in (
        "DOWNSTREAM_FUNCTION_APP_NAME",
        "EVENT_GRID_SYSTEM_TOPIC_NAME",
        "IMAGES_CONTAINER",
    ):
        assert f"output {output} string" in MAIN, output
    assert "project: ./samples/downstream" in azure_yaml
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_avm_modules_are_pinned_registry_references() -> None:
    modules = re.findall(r"^module \w+ '([^']+)'", ALL_BICEP, re.M)
    registry = [m for m in modules if m.startswith("br/")]
    assert len(registry) >= 8
    for reference in registry:
        assert re.fullmatch(r"br/public:avm/res/[\w/-]+:\d+\.\d+\.\d+", reference), reference
    for local in set(modules) - set(registry):
        assert (INFRA / local).is_file() or (INFRA / "app" / local).is_file(), local


@pytest.mark.slow
def test_azure_functions_doctor_reads_the_infra_as_flex_consumption() -> None:
    """The doctor's Flex checks ran (not skipped) and passed, the plan read from infra/."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "azure_functions_doctor.cli",
            "doctor",
            "--path",
            str(ROOT),
            "--profile",
            "deploy",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    statuses = {
        item["rule_id"]: item["status"]
        for section in report["results"]
        for item in section["items"]
    }
    for rule in (
        "check_flex_runtime_config",
        "check_flex_deployment_storage",
        "check_flex_deprecated_settings",
        "check_hosting_plan_lifecycle",
    ):
        assert statuses[rule] == "pass", (rule, statuses[rule])
