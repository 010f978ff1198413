"""A distillation stage can end with the moving average of its weights (`distil.ema_decay`)
instead of the last step's weights."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from compress.device import TrainRuntime
from compress.distill import DistilConfig
from compress.recipe import RecipeError, load_recipe
from compress.training import adamw_with_warmup, run_steps

STEPS, DECAY = 12, 0.8


def _train(ema_decay: float) -> tuple[torch.nn.Linear, list[torch.Tensor]]:
    """A linear model fitted for STEPS steps; the weights each step starts from are recorded."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    inputs, targets = torch.randn(8, 3), torch.randn(8, 1)
    seen: list[torch.Tensor] = []

    def step_loss(batch: list[int]) -> torch.Tensor:
        seen.append(model.weight.detach().clone())
        return torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])

    schedule = adamw_with_warmup(list(model.named_parameters()), 0.1, 0.0, STEPS, 0.0)
    run_steps(step_loss, {"model": model}, [1] * 8, 4, STEPS, schedule, random.Random(0),
              "test", TrainRuntime("cpu", "fp32", 1), None, ema_decay)
    return model, seen


def test_with_ema_the_model_ends_with_the_moving_average_of_every_steps_weights() -> None:
    last, seen = _train(0.0)
    averaged, _ = _train(DECAY)
    # The weights after step k are what step k + 1 starts from; the last are the plain run's.
    after_each = [*seen[1:], last.weight.detach()]
    expected = after_each[0]
    for weights in after_each[1:]:
        expected = DECAY * expected + (1 - DECAY) * weights
    torch.testing.assert_close(averaged.weight.detach(), expected)
    assert not torch.allclose(averaged.weight, last.weight)


def test_a_decay_of_one_or_more_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: sst2\nprune: {distil: {ema_decay: 1.0}}\n")
    with pytest.raises(RecipeError, match="ema_decay"):
        load_recipe(path)


def test_a_stage_key_tells_ema_runs_from_plain_ones() -> None:
    assert DistilConfig().key_part() != DistilConfig(ema_decay=0.999).key_part()
