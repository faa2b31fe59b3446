"""Stage-1 training: the loss, the data plan, checkpoints and exact resumption."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from anomaly_ov.checkpoints.training_state import (
    latest_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    prune_checkpoints,
)
from anomaly_ov.data.feature_cache import collate_features
from anomaly_ov.models.expert import AnomalyExpert, ExpertConfig
from anomaly_ov.models.expert_io import load_expert
from anomaly_ov.training.distributed import make_accelerator, plan_epoch, restart_period, steps_per_epoch
from anomaly_ov.training.expert import ExpertTrainer, balanced_bce_sum, class_weights

GRID, DIM, LEVELS = 4, 16, 2


class ToyFeatures(Dataset):
    """Cached-feature items of a toy task: anomalous images have a bright patch in their level tokens."""

    def __init__(self, num: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = [int(i % 3 == 0) for i in range(num)]
        self.crops = [1 + i % 2 for i in range(num)]
        self.items = []
        for label, count in zip(self.labels, self.crops, strict=True):
            final = torch.randn(count, GRID * GRID, DIM, generator=generator)
            levels = torch.randn(count, LEVELS, GRID * GRID, DIM, generator=generator)
            if label:
                levels[0, :, 5, :4] += 3.0
                final[0, 5, :4] += 3.0
            self.items.append((final.half(), levels.half()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return (index, *self.items[index])


def _expert(seed: int = 0) -> AnomalyExpert:
    torch.manual_seed(seed)
    return AnomalyExpert(ExpertConfig(vision_dim=DIM, expert_dim=8, grid=GRID, num_levels=LEVELS))


def _trainer(run_dir: Path, epochs: int, expert: AnomalyExpert, **kwargs) -> ExpertTrainer:
    options = {
        "global_batch_size": 8,
        "optimizer": partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.01),
    } | kwargs
    return ExpertTrainer(
        expert=expert,
        optimizer_factory=options.pop("optimizer"),
        scheduler_factory=partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, eta_min=0.0),
        accelerator=make_accelerator(cpu=True),
        run_dir=run_dir,
        epochs=epochs,
        seed=0,
        progress=False,
        **options,
    )


def _fit(trainer: ExpertTrainer, data: ToyFeatures, resume: bool = True):
    return trainer.fit(data, collate_features, lambda batch: batch, data.labels, resume=resume)


def test_class_weights_and_balanced_bce_against_a_hand_computation():
    labels = [1, 0, 0, 0, 1, 0, 0, 0]
    normal, anomalous = class_weights(labels)
    assert (normal, anomalous) == (8 / 12, 8 / 4)
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, -0.2, 0.0, 1.0, -2.0])
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    y = np.array(labels)
    expected = np.sum(np.where(y == 1, anomalous, normal) * -(y * np.log(p) + (1 - y) * np.log(1 - p)))
    got = balanced_bce_sum(logits, torch.tensor(labels), (normal, anomalous))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="needs both"):
        class_weights([0, 0, 0])


def test_epoch_plan_is_the_same_global_batches_for_any_number_of_processes():
    single = plan_epoch(21, 8, None, rank=0, world_size=1, seed=3, epoch=1)
    assert single.step_sizes == [8, 8, 5] and single.micro_batches[0] != list(range(8))
    ranks = [plan_epoch(21, 8, None, rank=r, world_size=2, seed=3, epoch=1) for r in range(2)]
    for step in range(3):
        shares = [r.micro_batches[step] for r in ranks]
        assert sorted(shares[0] + shares[1]) == sorted(single.micro_batches[step])
        assert not set(shares[0]) & set(shares[1])
    assert plan_epoch(21, 8, None, 0, 1, seed=3, epoch=2).micro_batches != single.micro_batches
    accumulated = plan_epoch(21, 8, 3, rank=0, world_size=1, seed=3, epoch=1)
    assert accumulated.step_of == [0, 0, 0, 1, 1, 1, 2, 2]
    assert accumulated.last_in_step == [False, False, True, False, False, True, False, True]
    # A last batch smaller than the number of processes is dropped, so every rank has work every step.
    assert steps_per_epoch(17, 8, world_size=2) == 2 and steps_per_epoch(18, 8, world_size=2) == 3
    assert restart_period(10, 0.5) == 5 and restart_period(1, 0.5) == 1


def test_optimizer_state_round_trips_through_safetensors_values(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    tensors, values = optimizer_tensors(optimizer)
    assert set(tensors) == {f"optimizer.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq")}
    save_file(tensors, str(tmp_path / "state.safetensors"), metadata={"values": json.dumps(values)})
    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(model.state_dict())
    restored = torch.optim.AdamW(clone.parameters(), lr=1.0)
    with safe_open(str(tmp_path / "state.safetensors"), framework="pt") as handle:
        stored = json.loads(handle.metadata()["values"])
    load_optimizer_tensors(restored, load_file(tmp_path / "state.safetensors"), stored)
    assert restored.param_groups[0]["lr"] == 1e-2
    batch = torch.randn(4, 3)
    for net, opt in ((model, optimizer), (clone, restored)):
        opt.zero_grad()
        net(batch).sum().backward()
        opt.step()
    torch.testing.assert_close(clone.weight, model.weight, rtol=0, atol=0)


def test_training_loss_falls_and_the_expert_ranks_anomalies_first(tmp_path):
    data = ToyFeatures(48)
    expert = _expert()
    result = _fit(_trainer(tmp_path, epochs=12, expert=expert), data)
    assert len(result.losses) == 12 * 6 and result.steps_per_epoch == 6
    assert np.mean(result.losses[-12:]) < 0.5 * np.mean(result.losses[:6])
    batch = collate_features([data[i] for i in range(len(data))])
    with torch.no_grad():
        scores = expert.eval()(
            batch.final.float(), [lv.float() for lv in batch.levels], batch.crops_per_image
        )
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data.labels, scores.scores.numpy()) > 0.95
    reloaded = load_expert(result.expert_path)
    for key, value in expert.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)


def test_resumed_run_continues_identically(tmp_path):
    data = ToyFeatures(20)
    straight = _fit(_trainer(tmp_path / "straight", epochs=2, expert=_expert()), data)
    _fit(_trainer(tmp_path / "resumed", epochs=1, expert=_expert()), data)
    checkpoint = latest_checkpoint(tmp_path / "resumed")
    assert checkpoint.epoch == 1 and checkpoint.model.is_file() and checkpoint.state.is_file()
    # A fresh process would start from a fresh initialisation: another seed shows it is overwritten.
    resumed = _fit(_trainer(tmp_path / "resumed", epochs=2, expert=_expert(seed=7)), data)
    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch == 0
    assert resumed.losses == straight.losses
    a, b = load_file(straight.expert_path), load_file(resumed.expert_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    # Plain SGD: the update is the gradient itself (Adam would magnify rounding in near-zero gradients).
    data, sgd = ToyFeatures(20), partial(torch.optim.SGD, lr=0.5)
    whole = _fit(_trainer(tmp_path / "whole", epochs=1, expert=_expert(), optimizer=sgd), data)
    micro = _fit(
        _trainer(tmp_path / "micro", epochs=1, expert=_expert(), optimizer=sgd, micro_batch_size=3), data
    )
    np.testing.assert_allclose(micro.losses, whole.losses, rtol=1e-5)
    a, b = load_file(whole.expert_path), load_file(micro.expert_path)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_only_the_last_checkpoints_are_kept(tmp_path):
    data = ToyFeatures(12)
    _fit(_trainer(tmp_path, epochs=3, expert=_expert(), keep_last_checkpoints=2), data)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_002", "epoch_003"]
    prune_checkpoints(tmp_path, keep=1)
    assert latest_checkpoint(tmp_path).epoch == 3 and len(list((tmp_path / "checkpoints").iterdir())) == 1
