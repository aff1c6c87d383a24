from __future__ import annotations

import json

import pytest

from shared.settings import Settings, SettingsError

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
