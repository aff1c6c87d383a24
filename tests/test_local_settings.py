"""The one reader of local.settings.json, and the tools that read the file through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.services import REPO_ROOT
from devtools.stack import app_settings
from emulators.functions_host.app_settings import load_settings
from emulators.functions_host.errors import HostStartupError
from shared.local_settings import FILE_NAME, LocalSettingsError, read_values, under_environment
from shared.ops.cli import main
from shared.settings import Settings


def write(folder: Path, document: object, *, bom: bool = False) -> Path:
    path = folder / FILE_NAME
    path.write_text(json.dumps(document), encoding="utf-8-sig" if bom else "utf-8")
    return path


@pytest.mark.parametrize("bom", [False, True])
def test_values_with_or_without_a_byte_order_mark(tmp_path: Path, bom: bool) -> None:
    path = write(tmp_path, {"IsEncrypted": False, "Values": {"A": "1", "É": "é"}}, bom=bom)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") is bom
    assert read_values(path) == {"A": "1", "É": "é"}


def test_a_missing_file_or_values_is_no_settings(tmp_path: Path) -> None:
    assert read_values(tmp_path / FILE_NAME) == {}
    assert read_values(write(tmp_path, {"IsEncrypted": False})) == {}
    assert read_values(write(tmp_path, {"Values": None})) == {}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "true/false"),
        (3, "a number"),
        (0.5, "a number"),
        (None, "null"),
        (["a"], "a list"),
        ({"a": "b"}, "an object"),
    ],
)
def test_a_value_that_is_not_a_string_is_refused_naming_key_and_file(
    tmp_path: Path, value: object, shown: str
) -> None:
    path = write(tmp_path, {"Values": {"OK": "yes", "FLAG": value}})
    with pytest.raises(LocalSettingsError) as info:
        read_values(path)
    assert str(info.value) == f"{path}: Values.FLAG must be a string, got {shown} (quote it)"


def test_the_value_itself_stays_out_of_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, {"Values": {"AZURE_OPENAI_API_KEY": 12345678901234}})
    with pytest.raises(LocalSettingsError) as info:
        read_values(path)
    assert "12345678901234" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not readable JSON ("),
        ("[1]", "expected a JSON object"),
        ('{"Values": ["A=1"]}', "'Values' must be an object"),
        ('{"IsEncrypted": true, "Values": {}}', "encrypted settings are not supported locally"),
        (b"\xff\xfe{}", "not readable ("),
    ],
)
def test_an_unusable_file_is_one_line_naming_it(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    path = tmp_path / FILE_NAME
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(LocalSettingsError) as info:
        read_values(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"Values": {"A": "file", "B": "file"}})
    assert under_environment(path, {"A": "env", "C": "env"}) == {
        "A": "env",
        "B": "file",
        "C": "env",
    }
    assert under_environment(tmp_path / "nowhere.json", {"A": "env"}) == {"A": "env"}


# --- every reader of the file follows the one rule -------------------------------------------------


def test_the_cli_refuses_a_non_string_value_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, {"Values": {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "N": 3}}
    )
    assert main(["list"], environ={}, cwd=tmp_path) == 2
    err = capsys.readouterr().err
    assert err == f"settings: {path}: Values.N must be a string, got a number (quote it)\n"


def test_the_cli_reads_a_file_saved_with_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The settings in the file are read (and found wrong), so the mark did not stop the reader.
    write(tmp_path, {"Values": {"AzureWebJobsStorage": "nonsense"}}, bom=True)
    assert main(["list"], environ={}, cwd=tmp_path) == 2
    assert (
        capsys.readouterr().err
        == "settings: AzureWebJobsStorage: not a storage connection string\n"
    )


def test_the_host_reads_the_file_by_the_same_rule(tmp_path: Path) -> None:
    write(tmp_path, {"Values": {"A": "file", "B": "file"}}, bom=True)
    assert dict(load_settings(tmp_path, {"A": "env"}).values) == {"A": "env", "B": "file"}
    path = write(tmp_path, {"Values": {"N": True}})
    with pytest.raises(HostStartupError) as info:
        load_settings(tmp_path, {})
    assert str(info.value) == f"{path}: Values.N must be a string, got true/false (quote it)"


def test_the_dev_stack_falls_back_to_the_example_and_refuses_non_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_ENV", "env")
    (tmp_path / "local.settings.example.json").write_text(
        json.dumps({"Values": {"FROM_ENV": "example", "ONLY_IN_FILE": "example"}})
    )
    settings = app_settings(tmp_path)
    assert (settings["FROM_ENV"], settings["ONLY_IN_FILE"]) == ("env", "example")
    write(tmp_path, {"Values": {"ONLY_IN_FILE": "local"}}, bom=True)
    assert app_settings(tmp_path)["ONLY_IN_FILE"] == "local"
    write(tmp_path, {"Values": {"ONLY_IN_FILE": 1}})
    with pytest.raises(LocalSettingsError, match=r"Values\.ONLY_IN_FILE must be a string"):
        app_settings(tmp_path)


def test_the_repository_example_states_the_defaults() -> None:
    values = read_values(REPO_ROOT / "local.settings.example.json")
    required = ("AzureWebJobsStorage", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT")
    assert Settings.from_env(values) == Settings.from_env(
        {**{name: values[name] for name in required}, "AZURE_OPENAI_API_KEY": "local-dev-key"}
    )
    assert {
        "IMAGE_REQUEST_DEADLINE_S", "IMAGE_MAX_CONNECT_ERRORS", "AZURE_OPENAI_MODEL",
        "AZURE_OPENAI_BURST", "IMAGE_MAX_STREAMS",
    } <= set(values)  # fmt: skip
