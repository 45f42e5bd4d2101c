"""The net-and-training ingredients of the best FF methods since 2023 (issue 27), each an
option that combines with the others and, where it is a property of the net, is BP's too:
data augmentation, the cosine schedule's partner AdamW (test_lr_schedule.py), batch norm,
parameter-free shortcuts, grouped layers and per-layer training windows. Each trains on the
bundled digits, FF and BP."""

import pytest
import torch
from helpers import digits_job

from ffbench import experiment

ONE_THREAD = "trainer.num_threads=1"
CONV = ["model=conv", "model.kernel=3", "model.stride=1", "model.padding=1", ONE_THREAD]
CWC = ["algo=ff", "algo.loss=cwc", "algo.negatives=none", "algo.label_input=none"]
ALGOS = {"ff": CWC, "bp": ["algo=bp"]}


def _trained_inputs(job) -> list[torch.Tensor]:
    """The training rows every pass of `job` hands the learner (it trains as usual)."""
    seen = []
    train_epoch = job.learner.train_epoch

    def recording(x, *args, **kwargs):
        seen.append(x.clone())
        return train_epoch(x, *args, **kwargs)

    job.learner.train_epoch = recording
    experiment.train(job, lambda step, metrics: None)
    return seen


@pytest.mark.parametrize("algo", ALGOS)
def test_augmentation_changes_the_training_images_only_and_follows_the_seed(algo):
    overrides = [*ALGOS[algo], *CONV, "model.depth=2", "model.channels=10", "trainer.epochs=2"]
    augmented = [*overrides, "dataset.augment=crop_flip", "dataset.crop_padding=1"]
    job = digits_job(augmented)
    plain, val, test = job.data.x_train.clone(), job.data.x_val.clone(), job.data.x_test.clone()
    first, second = _trained_inputs(job)
    assert first.shape == plain.shape and not torch.equal(first, plain)
    assert not torch.equal(first, second)  # a fresh variant every pass
    # validation, test and the stored training split stay as they were
    assert torch.equal(job.data.x_train, plain)
    assert torch.equal(job.data.x_val, val) and torch.equal(job.data.x_test, test)
    # every variant is the image shifted by at most one pixel and perhaps flipped: its pixels
    # (the digits' 8x8, with zeros coming in at the border) sum to at most the original's
    assert bool((first.sum(1) <= plain.sum(1) + 1e-5).all())
    again = _trained_inputs(digits_job(augmented))
    assert all(torch.equal(a, b) for a, b in zip(again, [first, second], strict=True))
    other = _trained_inputs(digits_job([*augmented, "trainer.seed=1"]))
    assert not torch.equal(other[0], first)
    assert all(torch.equal(x, plain) for x in _trained_inputs(digits_job(overrides)))


def test_a_flip_mirrors_half_the_images_and_a_crop_shifts_them():
    job = digits_job([*CWC, *CONV, "model.depth=1", "model.channels=10"])
    images = job.data.x_train.view(-1, 1, 8, 8)
    torch.manual_seed(0)
    flipped = experiment.datasets.AUGMENTATIONS["flip"](job.data, 2).view(-1, 1, 8, 8)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    kept = (flipped == images).flatten(1).all(1)
    assert bool((mirrored | kept).all()) and 0.4 < mirrored.float().mean() < 0.6
    torch.manual_seed(0)
    cropped = experiment.datasets.random_crop(images, 2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for index in range(40):  # each crop is its own image at one of the 25 offsets
        found = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(cropped[index], padded[index, :, top : top + 8, left : left + 8])
        ]
        assert found
        shifts.add(found[0])
    assert len(shifts) > 10  # and the offsets vary from image to image
