"""``streaming.local.gcs``: a command on ``gs://`` without credentials or the emulator fails at
once; on the GCS emulator without credentials Beam's ``gs://`` client is anonymous at once;
otherwise Beam looks credentials up itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import apache_beam
import pytest
from apache_beam.internal.gcp import auth
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.local.gcs import EMULATOR_ENV, anonymous_for_emulator, missing_credentials


@pytest.fixture
def no_lookup_yet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Beam's credential cache of this process as at its start (restored afterwards), no
    Application Default Credentials, and Beam's own lookup recorded instead of run: the
    list of its calls."""
    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC file
    calls: list[str] = []
    monkeypatch.setattr(
        auth._Credentials, "_get_service_credentials", staticmethod(lambda _: calls.append("x"))
    )
    return calls


def test_on_the_emulator_without_credentials_beam_does_not_look_them_up(no_lookup_yet, monkeypatch):
    monkeypatch.setenv(EMULATOR_ENV, "http://127.0.0.1:9")
    assert anonymous_for_emulator() is True
    assert auth.get_service_credentials(PipelineOptions()) is None  # anonymous
    assert no_lookup_yet == []


def test_without_the_emulator_beam_looks_credentials_up_itself(no_lookup_yet, monkeypatch):
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    assert anonymous_for_emulator() is False
    auth.get_service_credentials(PipelineOptions())
    assert no_lookup_yet == ["x"]


def test_with_credentials_beam_uses_them_on_the_emulator_too(no_lookup_yet, monkeypatch, tmp_path):
    adc = tmp_path / "adc.json"  # an authorized user's ADC file, read without the network
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "c",
                               "client_secret": "s", "refresh_token": "r"}))  # fmt: skip
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv(EMULATOR_ENV, "http://127.0.0.1:9")
    assert anonymous_for_emulator() is False
    auth.get_service_credentials(PipelineOptions())
    assert no_lookup_yet == ["x"]


def test_another_beam_is_left_to_find_out_itself_with_a_warning(no_lookup_yet, monkeypatch, caplog):
    monkeypatch.setenv(EMULATOR_ENV, "http://127.0.0.1:9")
    monkeypatch.setattr(apache_beam, "__version__", "2.78.0")
    with caplog.at_level(logging.WARNING):
        assert anonymous_for_emulator() is False
    assert "apache-beam 2.78.0" in caplog.text
    auth.get_service_credentials(PipelineOptions())
    assert no_lookup_yet == ["x"]


def test_a_command_on_gs_without_credentials_or_emulator_fails_at_once(
    no_lookup_yet, monkeypatch, capsys
):
    from streaming.cli import main

    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    assert main(["promote", "--model_dir", "gs://acme/models", "--version", "v0001"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fraudstream promote: no Google credentials for gs://")
    assert "gcloud auth application-default login" in err and EMULATOR_ENV in err
    assert no_lookup_yet == []  # Beam never started its retries


def test_what_stands_in_the_way_of_gs(no_lookup_yet, monkeypatch, tmp_path):
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    assert missing_credentials(["--model_dir", "/local/models"]) is None  # no gs:// at all
    assert "no Google credentials" in missing_credentials(["--model_dir=gs://acme/models"])
    monkeypatch.setenv(EMULATOR_ENV, "http://127.0.0.1:9")
    assert missing_credentials(["--model_dir", "gs://acme/models"]) is None  # the emulator
    monkeypatch.delenv(EMULATOR_ENV)
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "c",
                               "client_secret": "s", "refresh_token": "r"}))  # fmt: skip
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    assert missing_credentials(["--model_dir", "gs://acme/models"]) is None  # credentials
