"""anomaly_ov.data."""
