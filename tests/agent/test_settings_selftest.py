"""Settings from TOML + env, and the self-test on a quantized TFLite artifact with the profile's speed factor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConfigError, SelfTestFailed
from agent.selftest import latency_factor, run_self_test
from agent.settings import environment_values, load_settings
from firmware_profiles import get_profile
from tests.agent.builders import make_manifest


def test_toml_file_under_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('profile = "raspberry_pi_4"\ndata_dir = "/tmp/x"\nbandwidth_bps = 50000\n')
    monkeypatch.setenv("EDGEFLEET_AGENT_BANDWIDTH_BPS", "80000")
    settings = load_settings(config)
    assert (settings.profile, settings.data_dir, settings.bandwidth_bps) == ("raspberry_pi_4", Path("/tmp/x"), 80000)
    assert settings.api_host == "127.0.0.1"


def test_typo_in_config_fails_loudly(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('profile = "raspberry_pi_4"\nbandwith_bps = 5\n')
    with pytest.raises(ConfigError, match=f"^{config}: bandwith_bps: Extra inputs are not permitted$"):
        load_settings(config)
    config.write_text('profile = "raspberry_pi_4"\napi_port = "x"\nlog_level = 3\n')
    with pytest.raises(ConfigError, match=r"api_port: Input should be a valid integer.* \(and 1 more\)$"):
        load_settings(config)
    config.write_text('profile = "raspberry_pi_4\n')
    with pytest.raises(ConfigError, match=f"^{config}: not valid TOML: "):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_the_local_api_stays_on_the_device_unless_asked(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        config.write_text(f'profile = "raspberry_pi_4"\napi_host = "{host}"\n')
        assert load_settings(config).api_host == host
    config.write_text('profile = "raspberry_pi_4"\napi_host = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"would expose the local API .* set api_allow_remote = true"):
        load_settings(config)
    config.write_text('profile = "raspberry_pi_4"\napi_host = "0.0.0.0"\napi_allow_remote = true\n')
    assert load_settings(config).api_host == "0.0.0.0"
    config.write_text('profile = "raspberry_pi_4"\napi_host = "0.0.0.0"\napi_enabled = false\n')
    assert not load_settings(config).api_enabled


def test_int8_tflite_self_test_and_speed_factor(tflite_paths: dict[str, Path]) -> None:
    profile = get_profile("raspberry_pi_4")
    manifest = make_manifest(tflite_paths["int8"], profile=profile.name, atol=0.05)
    model, result = run_self_test(manifest, tflite_paths["int8"], profile, "device")
    assert result.cases == 2 and result.max_abs_error <= 0.05
    assert latency_factor(profile, "host") == 8.0 and latency_factor(profile, "device") == 1.0
    tight = profile.model_copy(
        update={"budgets": profile.budgets.model_copy(update={"latency_ms": result.latency_ms_p50 * 2})}
    )
    with pytest.raises(SelfTestFailed, match="x speed factor 8"):
        run_self_test(manifest, tflite_paths["int8"], tight, "host")
    assert model.predict(manifest.golden.cases[0].inputs)[manifest.outputs[0].name].shape == (1, 3)


def test_telemetry_and_fallback_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'profile = "raspberry_pi_4"\n[telemetry]\nwindow_size = 200\npolicy = "refuse_newest"\n'
        '[fallback.digits]\ntype = "torchserve"\nurl = "https://models.example.com"\nmodel = "digits"\nversion = 3\n'
        "[fallback_policy.digits]\nmin_confidence = 0.6\non_data_quality = false\n"
    )
    monkeypatch.setenv("EDGEFLEET_AGENT_TELEMETRY__WINDOW_S", "15")
    settings = load_settings(config)
    assert (settings.telemetry.window_size, settings.telemetry.window_s, settings.telemetry.policy) == (
        200, 15.0, "refuse_newest",
    )  # fmt: skip
    endpoint, policy = settings.fallback["digits"], settings.fallback_policy["digits"]
    assert (endpoint.type, endpoint.version, endpoint.verify_tls, endpoint.timeout_s) == ("torchserve", 3, True, 2.0)
    assert (policy.min_confidence, policy.on_data_quality, policy.on_no_model) == (0.6, False, True)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ('[fallback.digits]\ntype = "grpc"\nurl = "http://a"\nmodel = "d"\n', "type"),
        ('[fallback.digits]\ntype = "kserve"\nurl = "ftp://a"\nmodel = "d"\n', "url"),
        ('[fallback.digits]\ntype = "kserve"\nurl = "http://a"\nmodel = "d"\ntimeout = 3\n', "timeout"),
        ('[fallback."Not A Model"]\ntype = "kserve"\nurl = "http://a"\nmodel = "d"\n', "valid model name"),
        ("[fallback_policy.digits]\nmin_confidence = 1.5\n", "min_confidence"),
        ('[telemetry]\npolicy = "keep_all"\n', "policy"),
        ("[telemetry]\noutbox_max_bytes = 10\n", "outbox_max_bytes"),
    ],
)
def test_bad_telemetry_or_fallback_config_fails_loudly(tmp_path: Path, table: str, match: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('profile = "raspberry_pi_4"\n' + table)
    with pytest.raises(ConfigError, match=match):
        load_settings(config)


def test_environment_names_nest_and_take_json_for_tables(tmp_path: Path) -> None:
    env = {
        "EDGEFLEET_AGENT_TELEMETRY__WINDOW_S": "15",
        "edgefleet_agent_api_port": "9000",  # names are case-insensitive
        "EDGEFLEET_AGENT_TAGS": '{"site": "lab", "row": "3"}',
        "EDGEFLEET_AGENT_TAGS__ROW": "4",  # a key inside a table given whole goes on top of it
        "EDGEFLEET_AGENT_FALLBACK__DIGITS": '{"type": "kserve", "url": "http://a", "model": "d"}',
        "EDGEFLEET_AGENT_FALLBACK__DIGITS__TIMEOUT_S": "1.5",
        "EDGEFLEET_AGENT_FALLBACK_POLICY__DIGITS__MIN_CONFIDENCE": "0.7",
        "EDGEFLEET_AGENTX": "not ours",
        "HOME": "/root",
    }
    assert environment_values(env) == {
        "telemetry": {"window_s": "15"},
        "api_port": "9000",
        "tags": {"site": "lab", "row": "4"},
        "fallback": {"digits": {"type": "kserve", "url": "http://a", "model": "d", "timeout_s": "1.5"}},
        "fallback_policy": {"digits": {"min_confidence": "0.7"}},
    }
    config = tmp_path / "agent.toml"
    config.write_text('profile = "raspberry_pi_4"\napi_port = 8000\n[telemetry]\nwindow_size = 200\n')
    settings = load_settings(config, environ=env)
    assert (settings.api_port, settings.telemetry.window_size, settings.telemetry.window_s) == (9000, 200, 15.0)
    assert settings.tags == {"site": "lab", "row": "4"}
    assert (settings.fallback["digits"].timeout_s, settings.fallback_policy["digits"].min_confidence) == (1.5, 0.7)
    # Explicit values win over both; with no file, the environment alone is the config.
    assert load_settings(config, environ=env, api_port=1234).api_port == 1234
    only_env = load_settings(environ={"EDGEFLEET_AGENT_PROFILE": "x86_gateway", "EDGEFLEET_AGENT_MQTT_TLS": "true"})
    assert (only_env.profile, only_env.mqtt_tls, only_env.api_port) == ("x86_gateway", True, 8470)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEFLEET_AGENT_BANDWITH_BPS": "5"},
         "EDGEFLEET_AGENT_BANDWITH_BPS: bandwith_bps: Extra inputs are not permitted"),
        ({"EDGEFLEET_AGENT_TELEMETRY__WINDOW_S": "0"},
         "EDGEFLEET_AGENT_TELEMETRY__WINDOW_S: telemetry.window_s: Input should be greater than 0"),
        ({"EDGEFLEET_AGENT_TELEMETRY": '{"policy": "keep_all"}'},
         "EDGEFLEET_AGENT_TELEMETRY: telemetry.policy: Input "),
        ({"EDGEFLEET_AGENT_TAGS": "site=lab"}, "EDGEFLEET_AGENT_TAGS: this key takes a JSON value (Expecting value"),
        ({"EDGEFLEET_AGENT_TELEMETRY____WINDOW_S": "1"}, "EDGEFLEET_AGENT_TELEMETRY____WINDOW_S: an empty key between"),
        ({"EDGEFLEET_AGENT_API_PORT": "1", "EDGEFLEET_AGENT_API_PORT__X": "2"},
         "EDGEFLEET_AGENT_API_PORT__X: EDGEFLEET_AGENT_API_PORT is set to a value that is not a table"),
        ({"EDGEFLEET_AGENT_API_PORT": "1", "edgefleet_agent_api_port": "2"}, "set twice (names are case-insensitive)"),
    ],
)  # fmt: skip
def test_a_bad_environment_variable_is_named(tmp_path: Path, env: dict[str, str], message: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('profile = "raspberry_pi_4"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ=env)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    # A problem in the file still names the file, whatever the environment holds.
    config.write_text('profile = "raspberry_pi_4"\nretry_attempts = 0\n')
    with pytest.raises(ConfigError, match=f"^{config}: retry_attempts: "):
        load_settings(config, environ={"EDGEFLEET_AGENT_API_PORT": "1"})


def test_the_daemon_does_not_import_what_it_does_not_use() -> None:
    # pydantic-settings would bring asyncio, argparse and python-dotenv into the daemon: 3.1 MB of its RSS
    # (docs/agent.md, "Benchmark"). The agent reads its settings itself; this keeps it so.
    code = (
        "import sys\nimport agent.daemon, agent.cli, edgefleet.cli\n"
        "print(sorted(m for m in ('asyncio', 'argparse', 'dotenv', 'pydantic_settings', 'tensorflow') "
        "if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
