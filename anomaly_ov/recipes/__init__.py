"""Recipes: what an entry point does with its composed config (``scripts/*.py`` only compose and call).

* :func:`anomaly_ov.recipes.train_expert.train_expert` -- stage 1, configs/train_expert.yaml.
* :func:`anomaly_ov.recipes.eval_zsad.eval_zsad` -- zero-shot evaluation, configs/eval_zsad.yaml.
* :mod:`anomaly_ov.recipes.finetune` -- stage 2 (instruction tuning), configs/finetune.yaml.
* :mod:`anomaly_ov.recipes.eval_benchmark` -- VisA-D&R and MMAD, configs/eval_benchmark.yaml.
"""
