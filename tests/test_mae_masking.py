import math

import pytest
import torch

from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.masking import (
    MaskingSettings,
    key_masks_for,
    key_region_mask,
    masked_count,
    uncovered_key_region,
)
from lrerr_tools.training import seeded_generator


def random_key_masks(batch, seed=0):
    """Key regions of assorted sizes, 0 to 120 patches, scattered over the grid."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.linspace(0, 120, batch).round().long()
    masks = torch.zeros(batch, 196, dtype=torch.bool)
    for row, size in enumerate(sizes):
        masks[row, torch.randperm(196, generator=g)[:size]] = True
    return masks


@pytest.mark.parametrize("mask_ratio,key_mask_ratio", [(0.75, 0.9), (0.5, 1.0), (0.9, 0.3), (0.25, 0.9)])
def test_exact_count_per_row_and_key_coverage(mask_ratio, key_mask_ratio):
    key = random_key_masks(32)
    mask = key_region_mask(key, mask_ratio, key_mask_ratio, seeded_generator(1))
    budget = round(196 * mask_ratio)
    assert mask.dtype == torch.bool and mask.shape == key.shape
    assert mask.sum(dim=1).tolist() == [budget] * 32
    for row in range(32):
        size = int(key[row].sum())
        wanted = min(budget, math.ceil(round(key_mask_ratio * size, 9)))
        assert int((mask[row] & key[row]).sum()) >= wanted


def test_a_small_budget_is_spent_on_the_key_region_first():
    key = torch.zeros(4, 196, dtype=torch.bool)
    key[:, 20:140] = True  # 120 key patches, more than 0.5 * 196 = 98
    mask = key_region_mask(key, 0.5, 1.0, seeded_generator(0))
    assert (mask & ~key).sum() == 0 and mask.sum(dim=1).tolist() == [98] * 4


def test_all_of_t_with_ratio_one_and_the_rest_at_random():
    key = torch.zeros(1, 196, dtype=torch.bool)
    key[0, 50:80] = True
    hits = torch.zeros(196)
    for seed in range(200):
        mask = key_region_mask(key, 0.75, 1.0, seeded_generator(seed))
        assert mask[0, 50:80].all()
        hits += mask[0].float()
    outside = hits[~key[0]]
    # 117 of the 166 other patches are drawn each time: every one of them sometimes, none always
    assert outside.min() > 0 and outside.max() < 200


def test_key_patches_are_chosen_at_random_within_t():
    key = torch.zeros(1, 196, dtype=torch.bool)
    key[0, 100:190] = True  # 90 key patches; with ratio 0.5 and budget 98, some stay visible
    hits = torch.zeros(90)
    for seed in range(100):
        mask = key_region_mask(key, 0.5, 0.5, seeded_generator(seed))
        assert mask[0, 100:190].sum() >= 45
        hits += mask[0, 100:190].float()
    assert hits.min() > 0 and hits.max() < 100  # no fixed subset of T


def test_masks_are_deterministic_per_seed():
    key = random_key_masks(8)
    a = key_region_mask(key, 0.75, 0.9, seeded_generator(7, 3))
    b = key_region_mask(key, 0.75, 0.9, seeded_generator(7, 3))
    c = key_region_mask(key, 0.75, 0.9, seeded_generator(7, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_key_masks_for_dataset_or_per_face():
    own = torch.zeros(2, 196, dtype=torch.bool)
    own[0, 3] = own[1, 5] = True
    assert torch.equal(key_masks_for(own, [10, 11], "per-face"), own)
    shared = key_masks_for(own, [10, 11], "dataset")
    assert shared.sum(dim=1).tolist() == [2, 2] and shared[:, [10, 11]].all()


def test_masked_count_and_settings_checks():
    assert masked_count(196, 0.75) == 147
    MaskingSettings().check()
    for bad, message in [(dict(mask_ratio=1.0), "--mask-ratio"),
                         (dict(key_mask_ratio=1.5), "--key-mask-ratio"),
                         (dict(key_region="face"), "--key-region must be one of dataset, per-face")]:
        with pytest.raises(LrerrError, match=message):
            MaskingSettings(**bad).check()


def test_a_key_region_the_budget_cannot_cover_is_named_with_the_ratio_that_would():
    defaults = MaskingSettings()  # 0.75 of 196 = 147 masked; 0.9 of T asked for
    assert uncovered_key_region(163, 196, defaults) is None  # ceil(146.7) = 147 fits
    assert uncovered_key_region(170, 196, defaults) == (
        "the key region T holds 170 of the 196 patches and --key-mask-ratio 0.9 asks to mask 153 of them, "
        "but --mask-ratio 0.75 masks only 147 patches, so 23 of T would stay visible — raise --mask-ratio "
        "to 0.78 or more")
    # what the message promises holds: at 0.78, ceil(0.9 * 170) key patches are masked
    key = torch.zeros(1, 196, dtype=torch.bool)
    key[0, :170] = True
    mask = key_region_mask(key, 0.78, 0.9, seeded_generator(0, 0))
    assert uncovered_key_region(170, 196, MaskingSettings(mask_ratio=0.78)) is None
    assert int((mask & key).sum()) == 153
    assert "lower --key-mask-ratio" in uncovered_key_region(196, 196, MaskingSettings(0.5, 1.0))
