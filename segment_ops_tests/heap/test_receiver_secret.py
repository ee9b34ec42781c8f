"""The receiver never serves the sandbox's published secret where other machines can reach it."""

from __future__ import annotations

import logging

import pytest

from segment_ops.cli import main
from segment_ops.config import SANDBOX_HEAP_WEBHOOK_SECRET
from segment_ops.syncs.heap.receiver import (
    WebhookConfig,
    WebhookConfigError,
    WebhookSecretError,
    config_from_env,
    create_app_from_env,
)
from segment_ops.syncs.heap.server import start_receiver


def test_the_asgi_factory_refuses_to_start_without_heap_webhook_secret(ops_env):
    with pytest.raises(WebhookSecretError, match="HEAP_WEBHOOK_SECRET is not set") as raised:
        create_app_from_env()

    assert SANDBOX_HEAP_WEBHOOK_SECRET not in str(raised.value)


def test_the_asgi_factory_refuses_the_sandbox_value_set_explicitly(ops_env, monkeypatch):
    monkeypatch.setenv("HEAP_WEBHOOK_SECRET", SANDBOX_HEAP_WEBHOOK_SECRET)

    with pytest.raises(WebhookSecretError, match="HEAP_WEBHOOK_SECRET"):
        create_app_from_env()


def test_the_asgi_factory_starts_with_heap_webhook_secret_set(ops_env, monkeypatch):
    monkeypatch.setenv("HEAP_WEBHOOK_SECRET", "a-real-integration-secret")

    app = create_app_from_env()

    assert any(getattr(route, "path", None) == "/webhooks/heap" for route in app.routes)


def test_the_cli_refuses_a_public_host_without_heap_webhook_secret(ops_env, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["webhooks", "--host", "0.0.0.0", "--port", "0"])

    message = str(raised.value.code)
    assert (message.startswith("segment-ops webhooks: HEAP_WEBHOOK_SECRET is not set")
            and "on 0.0.0.0" in message)
    assert SANDBOX_HEAP_WEBHOOK_SECRET not in message


def test_a_receiver_on_a_public_host_with_the_sandbox_secret_is_refused(tmp_path):
    with pytest.raises(WebhookSecretError, match="bind to 127.0.0.1, ::1 or localhost"):
        start_receiver(WebhookConfig(home=tmp_path, heap_secret=SANDBOX_HEAP_WEBHOOK_SECRET), host="0.0.0.0")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_loopback_receiver_accepts_the_sandbox_secret_with_a_warning(tmp_path, caplog, host):
    caplog.set_level(logging.WARNING, logger="segment_ops.webhooks")

    with start_receiver(WebhookConfig(home=tmp_path, heap_secret=SANDBOX_HEAP_WEBHOOK_SECRET), host=host):
        pass

    assert "HEAP_WEBHOOK_SECRET is not set" in caplog.text and SANDBOX_HEAP_WEBHOOK_SECRET not in caplog.text


def test_a_receiver_on_a_public_host_with_its_own_secret_starts(tmp_path):
    with start_receiver(WebhookConfig(home=tmp_path, heap_secret="a-real-integration-secret"),
                        host="0.0.0.0") as r:
        assert r.heap_url.endswith("/webhooks/heap")


def test_the_receiver_settings_come_from_the_environment(ops_env, monkeypatch):
    monkeypatch.setenv("HEAP_WEBHOOK_SECRET", "new-secret")
    monkeypatch.setenv("HEAP_WEBHOOK_PREVIOUS_SECRETS", " old-one , ,older-two ")
    monkeypatch.setenv("HEAP_WEBHOOK_MAX_AGE_SECONDS", "60")
    monkeypatch.setenv("HEAP_WEBHOOK_MAX_FUTURE_SECONDS", "1.5")

    config = config_from_env()

    assert config.secrets == ("new-secret", "old-one", "older-two")
    assert (config.max_age_seconds, config.max_future_seconds) == (60.0, 1.5)
    assert "new-secret" not in repr(config) and "old-one" not in repr(config)


def test_the_default_window_allows_ordinary_clock_skew(ops_env):
    config = config_from_env()

    assert ((config.max_age_seconds, config.max_future_seconds) == (120.0, 30.0)
            and config.previous_secrets == ())


@pytest.mark.parametrize(("name", "value"), [("HEAP_WEBHOOK_MAX_AGE_SECONDS", "five"),
                                             ("HEAP_WEBHOOK_MAX_FUTURE_SECONDS", "-1"),
                                             ("HEAP_WEBHOOK_MAX_AGE_SECONDS", "inf"),
                                             ("HEAP_WEBHOOK_MAX_AGE_SECONDS", "0"),
                                             ("HEAP_WEBHOOK_MAX_FUTURE_SECONDS", "0")])
def test_an_unusable_window_setting_is_an_error_naming_it(ops_env, monkeypatch, name, value):
    # 0 would refuse every request: both limits are exclusive.
    monkeypatch.setenv(name, value)

    with pytest.raises(WebhookConfigError, match=f"{name} must be a number of seconds > 0"):
        config_from_env()


@pytest.mark.parametrize("field", ["max_age_seconds", "max_future_seconds"])
def test_a_receiver_configured_with_a_zero_window_refuses_to_start(tmp_path, field):
    with pytest.raises(ValueError, match=f"{field} must be > 0"):
        start_receiver(WebhookConfig(home=tmp_path, heap_secret="s", **{field: 0}))


def test_the_cli_exits_with_the_settings_problem(ops_env, monkeypatch):
    monkeypatch.setenv("HEAP_WEBHOOK_SECRET", "a-real-integration-secret")
    monkeypatch.setenv("HEAP_WEBHOOK_MAX_FUTURE_SECONDS", "soon")

    with pytest.raises(SystemExit) as raised:
        main(["webhooks", "--port", "0"])

    assert str(raised.value.code).startswith("segment-ops webhooks: HEAP_WEBHOOK_MAX_FUTURE_SECONDS must be")
    assert "a-real-integration-secret" not in str(raised.value.code)


def test_the_sandbox_secret_among_the_previous_secrets_is_refused_on_a_public_host(tmp_path):
    config = WebhookConfig(home=tmp_path, heap_secret="a-real-integration-secret",
                           previous_secrets=(SANDBOX_HEAP_WEBHOOK_SECRET,))

    with pytest.raises(WebhookSecretError, match="HEAP_WEBHOOK_PREVIOUS_SECRETS") as raised:
        start_receiver(config, host="0.0.0.0")

    assert SANDBOX_HEAP_WEBHOOK_SECRET not in str(raised.value)
