"""Recipes: what an entry point does with its composed config (``scripts/*.py`` only compose and call).

* :func:`anomaly_ov.recipes.train_expert.train_expert` -- stage 1, configs/train_expert.yaml.
* :func:`anomaly_ov.recipes.eval_zsad.eval_zsad` -- zero-shot evaluation, configs/eval_zsad.yaml.
"""
