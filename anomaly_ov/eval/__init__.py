"""anomaly_ov.eval."""
