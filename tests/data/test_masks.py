import numpy as np
import pytest
import torch

from hf_ssl.data import ViewCropCollator
from hf_ssl.data.masks import MultiBlockMaskCollator, rectangle_indices


class ScriptedRng:
    """Stands in for a numpy Generator: ``random()`` and ``integers(low, high)`` answer from scripts (``low`` once the
    positions run out) and record the ranges asked for."""

    def __init__(self, draws, positions):
        self.draws = list(draws)
        self.positions = list(positions)
        self.ranges = []

    def random(self):
        return self.draws.pop(0)

    def integers(self, low, high):
        self.ranges.append((low, high))
        return self.positions.pop(0) if self.positions else low


def examples(keys, valid=None, size=4):
    valid = valid or [True] * len(keys)
    return [
        {"image": torch.full((1, 3, size, size), key % 251, dtype=torch.uint8), "valid": ok, "key": key}
        for key, ok in zip(keys, valid)
    ]


def bounding_box(indices, width):
    rows, columns = np.asarray(indices) // width, np.asarray(indices) % width
    return rows.min(), columns.min(), rows.max() - rows.min() + 1, columns.max() - columns.min() + 1


# ----- hand-computed cases -------------------------------------------------------------------------------------
def test_rectangle_indices_are_the_row_major_patches_of_the_block():
    for top, left, h, w, width in [(0, 0, 1, 1, 4), (1, 2, 3, 2, 5), (2, 0, 2, 7, 7), (3, 4, 5, 3, 14)]:
        expected = [r * width + c for r in range(top, top + h) for c in range(left, left + w)]
        indices = rectangle_indices(top, left, h, w, width)
        assert indices.dtype == np.int64 and indices.tolist() == expected


def test_scripted_draws_give_the_hand_computed_masks_on_a_4x4_grid():
    # 2 x 2 target at (1, 1); 3 x 3 context at (0, 0) minus the target.
    collator = MultiBlockMaskCollator(
        64,
        16,
        num_targets=1,
        target_scale=(0.25, 0.25),
        target_aspect_ratio=(1.0, 1.0),
        context_scale=(0.5625, 0.5625),
        min_keep=2,
    )
    assert (collator.height, collator.width) == (4, 4)
    rng = ScriptedRng(draws=[0.3, 0.7], positions=[1, 1, 0, 0])
    masks = collator.sample_masks(1, rng)
    assert masks.target_size == (2, 2) and masks.context_size == (3, 3)
    assert masks.target.tolist() == [[[5, 6, 9, 10]]]
    assert masks.context.tolist() == [[0, 1, 2, 4, 8]]
    assert masks.target.dtype == masks.context.dtype == torch.int64
    # top-left corners come from [0, H - h) x [0, W - w), high end excluded, top first
    assert rng.ranges == [(0, 2), (0, 2), (0, 1), (0, 1)]


@pytest.mark.parametrize(
    "min_keep, relaxed, context",
    [
        (8, 2, [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18]),  # avoiding either target keeps <= 8
        (6, 1, [3, 8, 13, 15, 16, 17, 18]),  # avoiding the first target alone keeps 7 > 6
    ],
)
def test_context_lets_back_the_last_target_after_20_failed_tries(min_keep, relaxed, context):
    # 5 x 5 grid: 3 x 3 targets at (0, 0) and (1, 1); the 4 x 4 context can only sit at (0, 0).
    collator = MultiBlockMaskCollator(
        80,
        16,
        num_targets=2,
        target_scale=(0.37, 0.37),
        target_aspect_ratio=(1.0, 1.0),
        context_scale=(0.65, 0.65),
        min_keep=min_keep,
    )
    rng = ScriptedRng(draws=[0.5], positions=[0, 0, 1, 1])
    image = collator.sample_image_masks((3, 3), (4, 4), rng)
    assert [block.tolist() for block in image.targets] == [
        [0, 1, 2, 5, 6, 7, 10, 11, 12],
        [6, 7, 8, 11, 12, 13, 16, 17, 18],
    ]
    assert image.num_relaxed == relaxed
    assert image.context.tolist() == context
    context_placements = (len(rng.ranges) - 4) // 2
    assert context_placements == 20 * relaxed + 1


def test_block_size_follows_upstream_arithmetic():
    collator = MultiBlockMaskCollator()  # 14 x 14, the ViT-H/14 recipe's mask settings
    target = (collator.target_scale, collator.target_aspect_ratio)
    context = (collator.context_scale, collator.context_aspect_ratio)
    # draw 0: 29 patches at aspect 0.75 -> sqrt(21.75) ~ 4.66, sqrt(38.7) ~ 6.22
    assert collator.block_size(0.0, *target) == (5, 6)
    # one draw sets both: draw 0.5 -> 34 patches at aspect 1.125 -> sqrt(38.25) ~ 6.18, sqrt(30.2) ~ 5.50
    assert collator.block_size(0.5, *target) == (6, 5)
    # draw ~1: 39 patches at aspect ~1.5 -> sqrt(58.5) ~ 7.65, sqrt(26) ~ 5.10
    assert collator.block_size(np.nextafter(1.0, 0.0), *target) == (8, 5)
    # the context is shrunk to be strictly smaller than the grid: 166..195 patches -> 13 x 13 always
    assert collator.block_size(0.0, *context) == (13, 13)
    assert collator.block_size(np.nextafter(1.0, 0.0), *context) == (13, 13)


# ----- statistics over many batches ---------------------------------------------------------------------------
def test_block_sizes_over_many_batches_match_the_scale_and_aspect_ranges():
    collator = MultiBlockMaskCollator(input_size=224, patch_size=16)
    assert (collator.height, collator.width, collator.num_targets, collator.min_keep) == (14, 14, 4, 10)
    rng = np.random.default_rng(0)
    sizes = [collator.sample_block_sizes(rng) for _ in range(2000)]
    smallest, largest = int(196 * 0.15), int(196 * 0.2)
    areas, ratios = [], []
    for (h, w), context_size in sizes:
        # h ~ sqrt(k * a) and w ~ sqrt(k / a), each rounded: within half a patch
        assert (h - 0.5) * (w - 0.5) <= largest and (h + 0.5) * (w + 0.5) >= smallest
        assert (h - 0.5) / (w + 0.5) <= 1.5 and (h + 0.5) / (w - 0.5) >= 0.75
        assert context_size == (13, 13)
        areas.append(h * w / 196)
        ratios.append(h / w)
    assert 0.16 < np.mean(areas) < 0.185
    assert 1.05 < np.mean(ratios) < 1.25
    assert min(ratios) < 1.0 < 1.4 < max(ratios)  # the whole aspect range is visited
    # the ViT-H/14 grid (16 x 16): the context block is 15 x 15
    assert MultiBlockMaskCollator(224, 14).sample_block_sizes(rng)[1] == (15, 15)


def test_masks_are_in_range_unique_and_longer_than_min_keep():
    collator = MultiBlockMaskCollator()
    rng = np.random.default_rng(1)
    for _ in range(300):
        target_size, context_size = collator.sample_block_sizes(rng)
        image = collator.sample_image_masks(target_size, context_size, rng)
        for mask in (*image.targets, image.context):
            assert len(mask) > collator.min_keep
            assert mask.min() >= 0 and mask.max() < 196
            assert len(np.unique(mask)) == len(mask)
            assert (np.diff(mask) > 0).all()  # ascending
    for _ in range(100):
        masks = collator.sample_masks(4, rng)
        assert masks.context.shape[1] > collator.min_keep and masks.target.shape[2] > collator.min_keep
        for mask in (*masks.context, *masks.target.reshape(-1, masks.target.shape[2])):
            assert 0 <= mask.min() and mask.max() < 196 and len(mask.unique()) == len(mask)


def test_every_target_block_of_a_batch_is_a_rectangle_of_the_batch_size():
    collator = MultiBlockMaskCollator()
    rng = np.random.default_rng(2)
    seen_sizes = set()
    for _ in range(50):
        target_size, context_size = collator.sample_block_sizes(rng)
        seen_sizes.add(target_size)
        for _ in range(4):
            image = collator.sample_image_masks(target_size, context_size, rng)
            assert len(image.targets) == 4
            for block in image.targets:
                top, left, h, w = bounding_box(block, 14)
                assert (h, w) == target_size and len(block) == h * w
                assert block.tolist() == rectangle_indices(top, left, h, w, 14).tolist()
                assert top + h <= 13 and left + w <= 13  # upstream never reaches the last row or column
    assert len(seen_sizes) > 1


def test_masks_are_cut_to_the_shortest_in_the_batch_keeping_the_smallest_indices():
    collator = MultiBlockMaskCollator(target_scale=(0.15, 0.4), target_aspect_ratio=(0.5, 2.0))
    for seed in range(20):
        masks = collator.sample_masks(6, np.random.default_rng(seed))
        # the same draws, step by step: sizes, then each image in turn
        rng = np.random.default_rng(seed)
        target_size, context_size = collator.sample_block_sizes(rng)
        images = [collator.sample_image_masks(target_size, context_size, rng) for _ in range(6)]
        assert (masks.target_size, masks.context_size) == (target_size, context_size)
        context_length = min(len(image.context) for image in images)
        assert masks.context.shape == (6, context_length)
        assert masks.target.shape == (4, 6, target_size[0] * target_size[1])
        for b, image in enumerate(images):
            assert masks.context[b].tolist() == image.context[:context_length].tolist()
            for j in range(4):
                assert masks.target[j, b].tolist() == image.targets[j].tolist()
        assert masks.num_relaxed == tuple(image.num_relaxed for image in images)
    lengths = {len(image.context) for image in images}
    assert len(lengths) > 1  # the cut did shorten some context


# ----- overlap -------------------------------------------------------------------------------------------------
def test_context_avoids_every_target_block_of_its_image():
    collator = MultiBlockMaskCollator()
    rng = np.random.default_rng(3)
    for _ in range(500):
        target_size, context_size = collator.sample_block_sizes(rng)
        image = collator.sample_image_masks(target_size, context_size, rng)
        assert image.num_relaxed == 0  # with the recipe's settings a context avoiding all targets is found
        targets = set().union(*(block.tolist() for block in image.targets))
        context = set(image.context.tolist())
        assert not context & targets
        # the context is its whole 13 x 13 block at the top-left corner minus the targets
        assert context == set(rectangle_indices(0, 0, 13, 13, 14).tolist()) - targets


def test_a_relaxed_context_still_avoids_the_first_targets():
    # big targets: no context avoids all four often enough that some images relax
    collator = MultiBlockMaskCollator(target_scale=(0.3, 0.35), min_keep=20)
    rng = np.random.default_rng(4)
    relaxed = 0
    for _ in range(300):
        target_size, context_size = collator.sample_block_sizes(rng)
        image = collator.sample_image_masks(target_size, context_size, rng)
        kept_out = image.targets[: 4 - image.num_relaxed]
        assert not set(image.context.tolist()) & set().union(*(block.tolist() for block in kept_out))
        assert len(image.context) > 20
        relaxed += image.num_relaxed > 0
    assert 0 < relaxed < 300


def test_allow_overlap_lets_the_context_cover_targets():
    collator = MultiBlockMaskCollator(allow_overlap=True)
    rng = np.random.default_rng(5)
    overlapping = 0
    for _ in range(100):
        target_size, context_size = collator.sample_block_sizes(rng)
        image = collator.sample_image_masks(target_size, context_size, rng)
        assert image.num_relaxed == 0 and len(image.context) == context_size[0] * context_size[1]
        overlapping += bool(set(image.context.tolist()) & set().union(*(block.tolist() for block in image.targets)))
    assert overlapping > 0


# ----- collation and seeding --------------------------------------------------------------------------------------
def test_collator_adds_masks_to_the_inner_batch_and_drops_the_key():
    collator = MultiBlockMaskCollator(seed=7)
    batch = collator(examples([3, 1, 4]))
    assert set(batch) == {"image", "num_skipped", "masks_context", "masks_target"}
    assert batch["image"].shape == (1, 3, 3, 4, 4)
    assert batch["masks_context"].shape[0] == 3 and batch["masks_context"].dtype == torch.int64
    assert batch["masks_target"].shape[:2] == (4, 3) and batch["masks_target"].dtype == torch.int64
    with pytest.raises(ValueError, match="empty"):
        collator([])


def test_invalid_examples_get_no_masks():
    collator = MultiBlockMaskCollator()
    batch = collator(examples([0, 1, 2, 3], valid=[True, False, True, False]))
    assert batch["image"].shape[1] == 2 and int(batch["num_skipped"]) == 2
    assert batch["masks_context"].shape[0] == 2 and batch["masks_target"].shape[:2] == (4, 2)
    batch = collator(examples([5, 6], valid=[False, False]))
    assert batch["image"].shape[1] == 0
    assert batch["masks_context"].shape == (0, 0) and batch["masks_target"].shape == (4, 0, 0)


def test_masks_are_a_function_of_seed_and_keys():
    def masks(keys, seed=0, field="key"):
        batch = [
            {field if name == "key" else name: value for name, value in example.items()} for example in examples(keys)
        ]
        out = MultiBlockMaskCollator(seed=seed)(batch)
        return out["masks_context"], out["masks_target"]

    first = masks([10, 11, 12, 13])
    for again in (masks([10, 11, 12, 13]), masks([10, 11, 12, 13], field="index")):
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in (
        masks([10, 11, 12, 14]),
        masks([13, 12, 11, 10]),
        masks([10, 11, 12, 13], seed=1),
        masks([2**40, 0, 1, 2]),
    ):
        assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


def test_without_keys_torch_global_rng_seeds_the_masks():
    collator = MultiBlockMaskCollator()
    plain = [{"image": torch.zeros((1, 3, 4, 4), dtype=torch.uint8)} for _ in range(3)]
    torch.manual_seed(0)
    first = collator(plain)
    torch.manual_seed(0)
    again = collator(plain)
    torch.manual_seed(1)
    other = collator(plain)
    assert torch.equal(first["masks_target"], again["masks_target"]) and torch.equal(
        first["masks_context"], again["masks_context"]
    )
    assert not (
        first["masks_target"].shape == other["masks_target"].shape
        and torch.equal(first["masks_target"], other["masks_target"])
    )


def test_bad_keys_are_refused():
    collator = MultiBlockMaskCollator()
    mixed = examples([0, 1])
    del mixed[1]["key"]
    with pytest.raises(ValueError, match="1 do not"):
        collator(mixed)
    for key in (-1, 1.5, "a", True, 2**63):
        batch = examples([0])
        batch[0]["key"] = key
        with pytest.raises(ValueError, match="'key' of example 0"):
            collator(batch)
    batch = examples([0])
    batch[0]["key"] = torch.tensor(5)
    reference = collator(examples([5]))
    assert torch.equal(collator(batch)["masks_target"], reference["masks_target"])


def test_dataloader_workers_draw_the_masks_of_a_single_process():
    dataset = examples(list(range(8)))
    collator = MultiBlockMaskCollator(seed=3, collator=ViewCropCollator())

    def masks(num_workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collator, num_workers=num_workers)
        return [(batch["masks_context"], batch["masks_target"]) for batch in loader]

    single, workers = masks(0), masks(2)
    assert len(single) == len(workers) == 3
    for (context, target), (worker_context, worker_target) in zip(single, workers):
        assert torch.equal(context, worker_context) and torch.equal(target, worker_target)
    assert not torch.equal(single[0][1], single[1][1])


# ----- argument checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(input_size=0), "input_size"),
        (dict(input_size=(224,)), "input_size"),
        (dict(input_size="big"), "input_size"),
        (dict(input_size=225), "multiple of patch_size"),
        (dict(input_size=(224, 200)), "multiple of patch_size"),
        (dict(patch_size=0), "patch_size"),
        (dict(input_size=16, patch_size=16), "at least 2 x 2"),
        (dict(num_targets=0), "num_targets"),
        (dict(num_targets=2.0), "num_targets"),
        (dict(target_scale=(0.0, 0.2)), "target_scale"),
        (dict(target_scale=(0.3, 0.2)), "target_scale"),
        (dict(target_scale=(0.1, 0.2, 0.3)), "target_scale"),
        (dict(context_scale=(0.5, 1.5)), "context_scale"),
        (dict(target_aspect_ratio=(0, 1)), "target_aspect_ratio"),
        (dict(context_aspect_ratio=(2.0, 1.0)), "context_aspect_ratio"),
        (dict(context_aspect_ratio="wide"), "context_aspect_ratio"),
        (dict(min_keep=-1), "min_keep"),
        (dict(min_keep=1.5), "min_keep"),
        (dict(allow_overlap="no"), "allow_overlap"),
        (dict(seed=-1), "seed"),
        (dict(tries_per_relaxation=0), "tries_per_relaxation"),
        (dict(collator=3), "collator"),
        (dict(min_keep=40), "target blocks .* min_keep=40"),
        (dict(context_scale=(0.05, 0.05)), "context blocks .* min_keep=10"),
        (dict(input_size=32, patch_size=16), "target blocks"),  # a 2 x 2 grid has only 1 x 1 blocks
    ],
)
def test_invalid_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        MultiBlockMaskCollator(**arguments)


def test_sample_masks_refuses_a_negative_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        MultiBlockMaskCollator().sample_masks(-1, np.random.default_rng(0))
