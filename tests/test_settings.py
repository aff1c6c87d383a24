from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import pytest

from shared.settings import (
    DeploymentConfig,
    OperatorSettings,
    Settings,
    SettingsError,
    StorageConfig,
)

BASE = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:8090",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-image-2-1",
    "AZURE_OPENAI_API_KEY": "secret-key",
}


def test_defaults_follow_the_design() -> None:
    s = Settings.from_env(BASE)
    assert s.requests_queue == "image-requests"
    assert s.poison_queue == "image-requests-poison"
    assert s.images_container == "images"
    assert s.input_containers == ("inputs",)
    assert (s.min_partial_images, s.max_attempts, s.lock_lease_s) == (1, 4, 60)
    assert s.read_timeout_s == 600.0
    assert s.api_version == "2025-04-01-preview"
    (d,) = s.deployments
    assert (d.name, d.deployment, d.api_key, d.rpm) == (
        "gpt-image-2-1",
        "gpt-image-2-1",
        "secret-key",
        10,
    )


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env(BASE)
    assert "secret-key" not in repr(s)
    assert "UseDevelopmentStorage" not in repr(s)


@pytest.mark.parametrize(
    ("override", "first_word"),
    [
        ({"AZURE_OPENAI_ENDPOINT": ""}, "AZURE_OPENAI_ENDPOINT:"),
        ({"AZURE_OPENAI_ENDPOINT": "not a url"}, "AZURE_OPENAI_ENDPOINT:"),
        ({"IMAGE_MAX_ATTEMPTS": "many"}, "IMAGE_MAX_ATTEMPTS:"),
        ({"IMAGE_LOCK_LEASE_S": "90"}, "IMAGE_LOCK_LEASE_S:"),
        ({"IMAGE_REQUESTS_QUEUE": "Bad_Name"}, "IMAGE_REQUESTS_QUEUE:"),
        ({"AzureWebJobsStorage": "nonsense"}, "AzureWebJobsStorage:"),
        ({"AZURE_OPENAI_DEPLOYMENTS": "[{"}, "AZURE_OPENAI_DEPLOYMENTS:"),
        ({"AZURE_OPENAI_DEPLOYMENTS": "[]"}, "AZURE_OPENAI_DEPLOYMENTS:"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_them(
    override: dict[str, str], first_word: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, **override})
    message = str(info.value)
    assert message.startswith(first_word)
    assert "\n" not in message


def test_identity_based_storage() -> None:
    env = {k: v for k, v in BASE.items() if k != "AzureWebJobsStorage"}
    env["AzureWebJobsStorage__accountName"] = "acct"
    s = Settings.from_env(env)
    assert s.storage.uses_identity
    assert s.storage.blob_service_uri == "https://acct.blob.core.windows.net"
    assert s.storage.queue_service_uri == "https://acct.queue.core.windows.net"


def test_deployment_list_resolves_keys_and_sorts_by_priority() -> None:
    env = {
        **BASE,
        "KEY_B": "kb",
        "AZURE_OPENAI_DEPLOYMENTS": json.dumps(
            [
                {"name": "a", "endpoint": "http://a", "deployment": "d1", "priority": 2, "rpm": 5},
                {
                    "name": "b",
                    "endpoint": "http://b",
                    "deployment": "d2",
                    "priority": 1,
                    "api_key_setting": "KEY_B",
                },
            ]
        ),
    }
    s = Settings.from_env(env)
    assert [d.name for d in s.deployments] == ["b", "a"]
    assert s.deployments[0].api_key == "kb"
    assert s.deployments[1].api_key is None  # Entra ID
    assert s.deployments[1].rpm == 5


def test_missing_key_setting_is_named() -> None:
    env = {
        **BASE,
        "AZURE_OPENAI_DEPLOYMENTS": json.dumps(
            [{"endpoint": "http://a", "deployment": "d1", "api_key_setting": "NOPE"}]
        ),
    }
    with pytest.raises(SettingsError, match=r"^NOPE: required setting is missing"):
        Settings.from_env(env)


def test_several_input_containers_each_checked() -> None:
    s = Settings.from_env({**BASE, "IMAGE_INPUT_CONTAINERS": "inputs, brand-assets"})
    assert s.input_containers == ("inputs", "brand-assets")
    with pytest.raises(
        SettingsError, match=r"^IMAGE_INPUT_CONTAINERS: 'Bad' is not a valid container name"
    ):
        Settings.from_env({**BASE, "IMAGE_INPUT_CONTAINERS": "inputs,Bad"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"IMAGE_MAX_ATTEMPTS": "many"}, "IMAGE_MAX_ATTEMPTS: expected a number, got 'many'"),
        ({"IMAGE_LOCK_LEASE_S": "90"}, "IMAGE_LOCK_LEASE_S: 90 is outside 15..60"),
        ({"IMAGE_BACKOFF_BASE_S": "nan"}, "IMAGE_BACKOFF_BASE_S: nan is outside 0.0..600.0"),
        ({"AZURE_OPENAI_DEPLOYMENT": " "}, "AZURE_OPENAI_DEPLOYMENT: required setting is missing"),
        (
            {"AZURE_OPENAI_ENDPOINT": "ftp://x"},
            "AZURE_OPENAI_ENDPOINT: expected an http(s) URL, got 'ftp://x'",
        ),
        ({"AZURE_OPENAI_RPM": "0"}, "AZURE_OPENAI_RPM: 0 is outside 1..100000"),
        (
            {"IMAGE_QUOTA_SCOPE": "Everywhere"},
            "IMAGE_QUOTA_SCOPE: expected one of shared, process, got 'everywhere'",
        ),
        ({"IMAGES_CONTAINER": "ab"}, "IMAGES_CONTAINER: 'ab' is not a valid container name"),
        (
            {"AZURE_OPENAI_DEPLOYMENTS": "{}"},
            "AZURE_OPENAI_DEPLOYMENTS: expected a non-empty JSON list",
        ),
        (
            {"AzureWebJobsStorage": "", "AzureWebJobsStorage__blobServiceUri": "https://b"},
            "AzureWebJobsStorage: required setting is missing (set a connection string, "
            "AzureWebJobsStorage__accountName, or __blobServiceUri and __queueServiceUri)",
        ),
        # New settings: the deadline of a request, connect errors per delivery, the model.
        (
            {"IMAGE_REQUEST_DEADLINE_S": "5"},
            "IMAGE_REQUEST_DEADLINE_S: 5.0 is outside 10.0..2592000.0",
        ),
        (
            {"IMAGE_REQUEST_DEADLINE_S": "2592001"},
            "IMAGE_REQUEST_DEADLINE_S: 2592001.0 is outside 10.0..2592000.0",
        ),
        ({"IMAGE_MAX_CONNECT_ERRORS": "0"}, "IMAGE_MAX_CONNECT_ERRORS: 0 is outside 1..50"),
        ({"IMAGE_MAX_CONNECT_ERRORS": "51"}, "IMAGE_MAX_CONNECT_ERRORS: 51 is outside 1..50"),
        (
            {"IMAGE_MAX_CONNECT_ERRORS": "some"},
            "IMAGE_MAX_CONNECT_ERRORS: expected a number, got 'some'",
        ),
        (
            {"AZURE_OPENAI_MODEL": "dall-e-3"},
            "AZURE_OPENAI_MODEL: expected one of gpt-image-1, gpt-image-1-mini, gpt-image-1.5, "
            "gpt-image-2, got 'dall-e-3'",
        ),
    ],
)
def test_error_messages_are_exact(override: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, **override})
    assert str(info.value) == message


def entries(*items: dict[str, object]) -> dict[str, str]:
    return {**BASE, "AZURE_OPENAI_DEPLOYMENTS": json.dumps(list(items))}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("x", "AZURE_OPENAI_DEPLOYMENTS[0]: expected an object"),
        (
            {"endpoint": "http://a"},
            "AZURE_OPENAI_DEPLOYMENTS[0].deployment: required string is missing",
        ),
        (
            {"endpoint": "", "deployment": "d"},
            "AZURE_OPENAI_DEPLOYMENTS[0].endpoint: required string is missing",
        ),
        (
            {"endpoint": "nope", "deployment": "d"},
            "AZURE_OPENAI_DEPLOYMENTS[0].endpoint: expected an http(s) URL, got 'nope'",
        ),
        # A misspelt key is named rather than the key it was meant to be.
        (
            {"endpoint": "http://a", "deploymnt": "d"},
            "AZURE_OPENAI_DEPLOYMENTS[0]: unknown field 'deploymnt'",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "zz": 1, "aa": 2},
            "AZURE_OPENAI_DEPLOYMENTS[0]: unknown field 'aa'",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "api_key_setting": 5},
            "AZURE_OPENAI_DEPLOYMENTS[0].api_key_setting: expected the name of a setting",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "priority": True},
            "AZURE_OPENAI_DEPLOYMENTS[0].priority: expected a non-negative integer",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "rpm": "5"},
            "AZURE_OPENAI_DEPLOYMENTS[0].rpm: expected a non-negative integer",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "rpm": -1},
            "AZURE_OPENAI_DEPLOYMENTS[0].rpm: expected a non-negative integer",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "rpm": 0},
            "AZURE_OPENAI_DEPLOYMENTS[0].rpm: must be at least 1",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "name": 5},
            "AZURE_OPENAI_DEPLOYMENTS[0].name: expected a string",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "model": "gpt-4o"},
            "AZURE_OPENAI_DEPLOYMENTS[0].model: expected one of gpt-image-1, gpt-image-1-mini, "
            "gpt-image-1.5, gpt-image-2, got 'gpt-4o'",
        ),
        (
            {"endpoint": "http://a", "deployment": "d", "model": 2},
            "AZURE_OPENAI_DEPLOYMENTS[0].model: expected one of gpt-image-1, gpt-image-1-mini, "
            "gpt-image-1.5, gpt-image-2, got 2",
        ),
    ],
)
def test_deployment_entry_errors_name_the_entry_and_key(item: object, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(entries({"endpoint": "http://ok", "deployment": "ok"}, item))  # type: ignore[arg-type]
    assert str(info.value) == message.replace("[0]", "[1]")


def test_duplicate_entry_names_are_refused() -> None:
    twice = entries(
        {"endpoint": "http://a", "deployment": "d"}, {"endpoint": "http://b", "deployment": "d"}
    )
    with pytest.raises(
        SettingsError, match=r"^AZURE_OPENAI_DEPLOYMENTS: entry names must be unique$"
    ):
        Settings.from_env(twice)


def test_new_settings_defaults_and_values() -> None:
    s = Settings.from_env(BASE)
    assert (s.request_deadline_s, s.max_connect_errors) == (86400.0, 5)
    assert s.deployments[0].model == "gpt-image-2"
    s = Settings.from_env(
        {
            **BASE,
            "IMAGE_REQUEST_DEADLINE_S": "2592000",
            "IMAGE_MAX_CONNECT_ERRORS": "50",
            "AZURE_OPENAI_MODEL": "GPT-Image-1-Mini",
        }
    )
    assert (s.request_deadline_s, s.max_connect_errors) == (2592000.0, 50)
    assert s.deployments[0].model == "gpt-image-1-mini"


def test_entry_model_defaults_to_azure_openai_model() -> None:
    env = entries(
        {"name": "a", "endpoint": "http://a", "deployment": "d1"},
        {"name": "b", "endpoint": "http://b", "deployment": "d2", "model": "gpt-image-1.5"},
    )
    assert [d.model for d in Settings.from_env(env).deployments] == ["gpt-image-2", "gpt-image-1.5"]
    env["AZURE_OPENAI_MODEL"] = "gpt-image-1"
    assert [d.model for d in Settings.from_env(env).deployments] == ["gpt-image-1", "gpt-image-1.5"]


def test_entry_keys_left_out_or_null_take_the_defaults() -> None:
    (d,) = Settings.from_env(
        entries(
            {"endpoint": "http://a/", "deployment": "d", "name": "", "rpm": None, "priority": None}
        )
    ).deployments
    assert (d.name, d.endpoint, d.priority, d.rpm, d.model, d.api_key) == (
        "d",
        "http://a",
        0,
        10,
        "gpt-image-2",
        None,
    )


def test_names_are_case_insensitive_and_blank_is_absent() -> None:
    env = {k.lower(): v for k, v in BASE.items()}
    s = Settings.from_env({**env, "image_max_attempts": " 7 ", "IMAGE_BACKOFF_BASE_S": "  "})
    assert (s.max_attempts, s.backoff_base_s) == (7, 2.0)
    assert s.deployments[0].api_key == "secret-key"


def test_a_given_mapping_is_read_and_the_environment_only_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGE_MAX_ATTEMPTS", "9")
    assert Settings.from_env(BASE).max_attempts == 4
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env().max_attempts == 9
    assert OperatorSettings.from_env().requests_queue == "image-requests"


def test_operator_settings_need_no_deployment_and_values_are_frozen() -> None:
    op = OperatorSettings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert (op.requests_queue, op.images_container, op.input_containers) == (
        "image-requests",
        "images",
        ("inputs",),
    )
    s = Settings.from_env(BASE)
    assert isinstance(s, OperatorSettings)  # the storage half, so operator code takes either
    with pytest.raises(FrozenInstanceError):
        s.max_attempts = 5  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        s.deployments[0].rpm = 5  # type: ignore[misc]


def test_values_are_built_directly_without_the_environment() -> None:
    # Code and tests build the values by hand; only from_env validates.
    d = DeploymentConfig("d", "http://x", "d")
    assert (d.priority, d.rpm, d.model) == (0, 10, "gpt-image-2")
    s = Settings(storage=StorageConfig(connection_string="x"), deployments=(d,), max_attempts=2)
    assert replace(s, max_attempts=3).max_attempts == 3
    assert s.request_deadline_s == Settings.from_env(BASE).request_deadline_s


APPINSIGHTS = "InstrumentationKey=11111111-2222-3333-4444-555555555555;IngestionEndpoint=https://x/"


def test_telemetry_settings_default_to_off_and_are_read() -> None:
    off = Settings.from_env(BASE)
    assert (off.appinsights_connection_string, off.otlp_endpoint) == (None, None)
    assert off.service_name == "imagegen-functions"
    on = Settings.from_env(
        {
            **BASE,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": APPINSIGHTS,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/",
            "OTEL_SERVICE_NAME": "imagegen-eu",
        }
    )
    assert on.appinsights_connection_string == APPINSIGHTS
    assert on.otlp_endpoint == "http://127.0.0.1:4318"
    assert on.service_name == "imagegen-eu"
    assert "11111111" not in repr(on), "the connection string stays out of repr"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"APPLICATIONINSIGHTS_CONNECTION_STRING": "IngestionEndpoint=https://x/"},
            "APPLICATIONINSIGHTS_CONNECTION_STRING: expected an Application Insights connection "
            "string (InstrumentationKey=...;IngestionEndpoint=...)",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT: expected an http(s) URL, got '127.0.0.1:4318'",
        ),
        (
            {"OTEL_SERVICE_NAME": "image gen"},
            "OTEL_SERVICE_NAME: expected up to 128 letters, digits, '.', '_' or '-', "
            "got 'image gen'",
        ),
    ],
)
def test_bad_telemetry_settings_are_named(override: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, **override})
    assert str(info.value) == message
