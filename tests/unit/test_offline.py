import os

from anomaly_ov.offline import OFFLINE_ENV, enforce_offline


def test_offline_variables_are_set_for_the_suite():
    # conftest.py calls enforce_offline() before any hub client is imported.
    for key, value in OFFLINE_ENV.items():
        assert os.environ[key] == value or key not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_enforce_offline_keeps_an_explicit_choice(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    enforce_offline()
    assert os.environ["WANDB_MODE"] == "disabled"
