"""anomaly_ov.models."""
