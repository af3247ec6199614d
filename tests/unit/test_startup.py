"""Start-up validation: endpoint and Redis URL forms, unknown keys and variables, redaction,
charge-aware admission decisions."""

from __future__ import annotations

import json
import socket

import pytest

from orchestrator.core import startup
from orchestrator.core.deployments import without_password
from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import load_settings
from orchestrator.throttle.admission import admits, charge_of

DEP = {"name": "ptu", "model": "gpt-4o-mini", "ptus": 25}


@pytest.mark.parametrize(
    ("env", "variable", "says"),
    [
        ({"PTU_AZURE_OPENAI_ENDPOINT": "myres.openai.azure.com"}, "PTU_AZURE_OPENAI_ENDPOINT",
         "not an endpoint URL"),
        ({"PTU_AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com/openai"},
         "PTU_AZURE_OPENAI_ENDPOINT", "drop the '/openai' suffix"),
        ({"PTU_AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com/x/y"},
         "PTU_AZURE_OPENAI_ENDPOINT", "no path"),
        ({"PTU_REDIS_URL": "localhost:6379"}, "PTU_REDIS_URL", "not a Redis URL"),
        ({"PTU_REDIS_URL": "redis://localhost:6379/zero"}, "PTU_REDIS_URL", "not a number"),
        ({"PTU_DEPLOYMENTS": json.dumps([{**DEP, "upper_treshold": 0.8}])}, "PTU_DEPLOYMENTS",
         "upper_treshold"),
        ({"PTU_DEPLOYMENTS": json.dumps([{**DEP, "endpoint": "https://x/openai/"}])},
         "PTU_DEPLOYMENTS", "/openai"),
        ({"PTU_DEPLOYMENTS": json.dumps([{**DEP, "spillover": ["ptu"]}])}, "PTU_DEPLOYMENTS",
         "itself"),
        ({"PTU_DEPLOYMENTS": json.dumps([{**DEP, "spillover": ["a", "b"]}])}, "PTU_DEPLOYMENTS",
         "'a' is not a deployment"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, says: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "\n" not in text and text.startswith(variable) and says in text, text


def test_spillover_is_one_name_or_a_list_and_keys_come_from_the_named_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deps = [
        {**DEP, "spillover": "eu"},
        {"name": "eu", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1000,
         "endpoint": "https://eu.example.com/", "api_key_env": "EU_KEY", "spillover": ["us"]},
        {"name": "us", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1000},
    ]  # fmt: skip
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps(deps))
    monkeypatch.setenv("PTU_AZURE_OPENAI_ENDPOINT", "http://127.0.0.1:8081")
    s = load_settings()
    ptu, eu, us = s.deployments
    assert (ptu.spillover_names, eu.spillover_names, us.spillover_names) == (["eu"], ["us"], [])
    assert s.endpoint_of(eu) == "https://eu.example.com" and s.endpoint_of(us) == (
        "http://127.0.0.1:8081"
    )
    with pytest.raises(ConfigError, match="EU_KEY, which is not set"):
        s.api_key_of(eu, {})
    key = s.api_key_of(eu, {"EU_KEY": "k2"})
    assert key is not None and key.get_secret_value() == "k2"


def test_unknown_variables_name_the_closest_valid_one() -> None:
    s = load_settings()
    found = startup.unknown_variables(
        s, {"PTU_UPPER_TRESHOLD": "0.8", "PTU_REDIS_URL": "redis://x/0", "PTU_ZZZ": "1"}
    )
    assert found == [
        "PTU_UPPER_TRESHOLD is not a known variable and is ignored; did you mean "
        "PTU_UPPER_THRESHOLD?",
        "PTU_ZZZ is not a known variable and is ignored",
    ]


def test_effective_configuration_redacts_secrets() -> None:
    s = load_settings(
        azure_openai_api_key="sk-secret",
        api_keys={"tenant-key": "acme"},
        redis_url="redis://user:pw@localhost:6379/0",
        eventhub_connection_string="Endpoint=sb://x;SharedAccessKey=abc",
    )
    text = json.dumps(startup.effective_configuration(s), default=str)
    for secret in ("sk-secret", "tenant-key", ":pw@", "SharedAccessKey"):
        assert secret not in text
    assert "acme" in text and "redis://user:***@localhost:6379/0" in text


def test_a_taken_port_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port: cannot listen on 127.0.0.1:{port}"):
            startup.check_port("127.0.0.1", port, "--port")


@pytest.mark.parametrize(
    ("utilisation", "charge", "upper", "ok"),
    [
        (0.0, 0.5, 0.9, True),
        (0.5, 0.4, 0.9, True),
        (0.5, 0.41, 0.9, False),
        (0.89, 0.02, 0.9, False),
        (0.01, 2.0, 0.9, True),  # bigger than the headroom: runs once the bucket is empty
        (0.3, 2.0, 0.9, False),
    ],
)
def test_admission_admits_a_charge_only_under_the_upper_threshold(
    utilisation: float, charge: float, upper: float, ok: bool
) -> None:
    assert admits(utilisation, charge, upper) is ok


def test_charge_is_normalised_by_the_window_capacity() -> None:
    # 6,000 TPM, 60 s window: a 1,000-token call (100 prompt + 300 x weight 3) is 1/6
    assert charge_of(100, 300, 3.0, 6_000.0) == pytest.approx(1000 / 6000)
    assert charge_of(100, 300, 3.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://pw@host:6380", "rediss://***@host:6380"),
        ("redis://u:p@ss:w@rd@host/0", "redis://u:***@host/0"),  # the host follows the last @
        ("redis//u:pw@host/0", "redis//u:***@host/0"),  # malformed: still hidden
        ("u:pw@host", "u:***@host"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert without_password(url) == shown


def test_redis_addresses_and_connection_failures_as_an_operator_says_them() -> None:
    assert startup.redis_address("redis://u:pw@10.0.0.4:6390/0") == "10.0.0.4:6390"
    assert startup.redis_address("rediss://cache.example") == "cache.example:6379"
    assert startup.redis_address("redis://[::1]:7000") == "[::1]:7000"
    assert startup.redis_address("unix:///run/redis.sock") == "/run/redis.sock"
    failure = startup.connect_failure
    assert failure(ConnectionRefusedError(111, "Connection refused"), 2) == "connection refused"
    assert failure(socket.gaierror(-2, "Name or service not known"), 2) == "unknown host"
    assert failure(TimeoutError(), 2.0) == "no answer within 2 s"
    assert failure(FileNotFoundError(2, "No such file"), 2) == "no such socket"
    assert failure(OSError(113, "No route to host"), 2) == "no route to host"


@pytest.mark.parametrize("blank", ["", "  ", "\n"])
def test_an_empty_optional_secret_is_unset(blank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PTU_AZURE_OPENAI_API_KEY",
        "PTU_INGRESS_API_KEY",
        "PTU_EVENTHUB_CONNECTION_STRING",
    ):
        monkeypatch.setenv(name, blank)
    settings = load_settings()
    assert settings.azure_openai_api_key is None  # Entra ID, as without the variable
    assert settings.ingress_api_key is None and settings.eventhub_connection_string is None
    monkeypatch.setenv("PTU_AZURE_OPENAI_API_KEY", " key\n")
    key = load_settings().azure_openai_api_key
    assert key is not None and key.get_secret_value() == "key"
