"""Stage 2's data order (training.instruct): seeded shuffle or the mixture's own order, cut into steps."""

from anomaly_ov.training.instruct import epoch_batches, plan_epoch_steps


def test_unshuffled_order_keeps_each_pair_in_one_optimizer_step() -> None:
    batches = epoch_batches(6, per_device_batch_size=1, world_size=2, seed=3, epoch=1, shuffle=False)
    assert batches == [[0], [1], [2], [3], [4], [5]]
    # batch i goes to rank i % 2: items 2k and 2k+1 (an anomalous and a normal image) share step k
    for rank in (0, 1):
        plan = plan_epoch_steps(batches, world_size=2, accumulation=1, rank=rank)
        assert plan.steps == [[[rank]], [[2 + rank]], [[4 + rank]]] and plan.samples == [2, 2, 2]


def test_shuffled_order_is_a_seeded_permutation_per_epoch() -> None:
    first = epoch_batches(20, per_device_batch_size=2, world_size=2, seed=0, epoch=0)
    assert first == epoch_batches(20, per_device_batch_size=2, world_size=2, seed=0, epoch=0)
    assert sorted(i for batch in first for i in batch) == list(range(20))
    assert first != epoch_batches(20, per_device_batch_size=2, world_size=2, seed=0, epoch=1)
    assert first != epoch_batches(20, per_device_batch_size=2, world_size=2, seed=1, epoch=0)
    assert [i for batch in first for i in batch] != list(range(20))
