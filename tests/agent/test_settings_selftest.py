"""Settings from TOML + env, and the self-test on a quantized TFLite artifact with the profile's speed factor."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError, SelfTestFailed
from agent.selftest import latency_factor, run_self_test
from agent.settings import load_settings
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
