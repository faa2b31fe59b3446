"""anomaly_ov.training."""
