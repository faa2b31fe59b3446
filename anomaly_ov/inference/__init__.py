"""Inference: the pipeline (load, preprocess, generate) and the ``chat`` / ``predict`` commands."""
