"""Stage 2 on 2 CPU processes (torchrun, gloo, DS_ACCELERATOR=cpu) with DeepSpeed ZeRO-2 and ZeRO-3.

Each run takes real optimizer steps on the tiny model; the 2-process runs must give the 1-process run's
loss sequence and weights (plain SGD, a fixed global batch of 4), and every rank must hold the same weights.
"""

import numpy as np
import pytest
from finetune_runs import logged, overrides, reference_run, run_finetune  # same folder (on sys.path)


def _same_weights_everywhere(metrics: dict, reference: dict) -> None:
    ranks = metrics["rank_checksums"]
    assert len(ranks) == metrics["num_processes"] == 2
    assert ranks[0] == ranks[1]  # bitwise: every rank holds the same (gathered) weights
    np.testing.assert_allclose(ranks[0], reference["rank_checksums"][0], rtol=1e-6, atol=1e-7)


@pytest.mark.multiprocess
def test_zero3_two_processes_equal_one(tiny_zoo, synthetic_data, tmp_path, tmp_path_factory):
    _, reference = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    arguments = overrides(
        tmp_path, tiny_zoo, synthetic_data, "trainer=stage2/zero3", "trainer.accelerator.bf16=false"
    )
    metrics = run_finetune(tmp_path / "run", arguments, processes=2)
    assert metrics["total_steps"] == reference["total_steps"] == 4  # 8 samples, global batch 4, 2 epochs
    assert metrics["losses"][-1] < metrics["losses"][0]
    np.testing.assert_allclose(metrics["losses"], reference["losses"], rtol=1e-5)
    _same_weights_everywhere(metrics, reference)
    assert (tmp_path / "run" / "model" / "anomaly_ov.json").is_file()


@pytest.mark.multiprocess
def test_zero2_two_processes_equal_one(tiny_zoo, synthetic_data, tmp_path, tmp_path_factory):
    _, reference = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    arguments = overrides(
        tmp_path, tiny_zoo, synthetic_data, "trainer=stage2/zero2", "trainer.accelerator.bf16=false"
    )
    metrics = run_finetune(tmp_path / "run", arguments, processes=2)
    assert metrics["losses"][-1] < metrics["losses"][0]
    np.testing.assert_allclose(metrics["losses"], reference["losses"], rtol=1e-5)
    _same_weights_everywhere(metrics, reference)


@pytest.mark.multiprocess
@pytest.mark.slow  # two 2-process launches: ~2 minutes on 2 shared cores
def test_zero2_two_processes_interrupted_and_resumed_equal_one(
    tiny_zoo, synthetic_data, tmp_path, tmp_path_factory
):
    _, reference = reference_run(tiny_zoo, synthetic_data, tmp_path_factory)
    arguments = overrides(
        tmp_path, tiny_zoo, synthetic_data, "trainer=stage2/zero2", "trainer.accelerator.bf16=false"
    )
    run_dir = tmp_path / "run"
    first = run_finetune(run_dir, [*arguments, "trainer.fit.stop_after_steps=2"], processes=2)
    assert not first["finished"] and len(first["losses"]) == 2 and first["model"] is None
    resumed = run_finetune(run_dir, arguments, processes=2)
    assert resumed["resumed_from_step"] == 2 and resumed["finished"]
    assert resumed["losses"][-1] < resumed["losses"][0]
    np.testing.assert_allclose(resumed["losses"], reference["losses"], rtol=1e-5)
    _same_weights_everywhere(resumed, reference)
    assert [line["step"] for line in logged(run_dir)] == [1, 2, 3, 4]
