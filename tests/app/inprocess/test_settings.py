"""Settings: YAML file, environment on top, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ConfigError, load_settings


def test_yaml_file_sets_nested_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(f"model_repository: {tmp_path}\nbatching:\n  max_batch_size: 7\n"
                      "routing:\n  boolq: gpu\n")
    monkeypatch.setenv("FFS_CONFIG", str(config))
    settings = load_settings()
    assert settings.batching.max_batch_size == 7
    assert settings.routing == {"boolq": "gpu"}


def test_environment_overrides_the_yaml_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(f"model_repository: {tmp_path}\nbatching:\n  max_wait_ms: 9\n")
    monkeypatch.setenv("FFS_CONFIG", str(config))
    monkeypatch.setenv("FFS_BATCHING__MAX_WAIT_MS", "3.5")
    assert load_settings().batching.max_wait_ms == 3.5


def test_an_invalid_value_names_the_field_and_the_value(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFS_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("FFS_BATCHING__MAX_BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match=r"batching\.max_batch_size: .*greater than or equal"):
        load_settings()


def test_a_missing_config_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFS_CONFIG", "/nonexistent/serve.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_unknown_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(f"model_repository: {tmp_path}\nbatchng:\n  max_wait_ms: 1\n")
    monkeypatch.setenv("FFS_CONFIG", str(config))
    with pytest.raises(ConfigError, match="batchng"):
        load_settings()


def test_the_gpu_pool_has_its_own_batch_policy(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFS_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("FFS_GPU_POOL__BATCHING__MAX_BATCH_SIZE", "256")
    settings = load_settings()
    assert settings.gpu_pool.batching.max_batch_size == 256
    assert settings.batching.max_batch_size == 32
    assert settings.gpu_pool.batching.min_fill < settings.batching.min_fill


def test_routing_accepts_hybrid_and_names_a_bad_route(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFS_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("FFS_ROUTING", '{"boolq": "hybrid"}')
    assert load_settings().routing == {"boolq": "hybrid"}
    monkeypatch.setenv("FFS_ROUTING", '{"boolq": "tpu"}')
    with pytest.raises(ConfigError, match=r"routing\.boolq: .*'cpu', 'gpu' or 'hybrid'"):
        load_settings()


def test_grpc_without_its_extra_is_refused_with_the_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.settings

    monkeypatch.setattr(app.settings, "_installed", lambda module: module != "grpc")
    with pytest.raises(ConfigError, match=r"pip install '\.\[grpc\]'"):
        load_settings(model_repository=tmp_path, grpc_port=8001)


def test_grpc_is_off_by_default(tmp_path: Path) -> None:
    assert load_settings(model_repository=tmp_path).grpc_port is None
