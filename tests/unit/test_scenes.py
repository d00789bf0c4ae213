"""The shapes-scene generator: deterministic, captions that describe the scene, honest splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils.datasets import scenes
from course_utils.datasets.scenes import (
    COLOURS,
    HELDOUT_COMBOS,
    SHAPES,
    Vocab,
    caption_from_objects,
    cell_masks,
    generate_scene,
    make_dataset,
    make_splits,
    parse_caption,
    parse_relations,
)


@pytest.fixture(scope="module")
def splits():
    return make_splits(seed=3, n_train=300, n_valid=50, n_test=100, n_heldout=100)


def test_deterministic_per_seed():
    a, b, c = make_dataset(40, seed=7), make_dataset(40, seed=7), make_dataset(40, seed=8)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.masks, b.masks)
    assert a.captions == b.captions
    assert a.captions != c.captions


def test_captions_parse_back_to_the_scene(splits):
    for data in splits.values():
        for caption, objects in zip(data.captions, data.objects, strict=True):
            # the objects named, in order, are the scene's objects in reading order
            ordered = sorted(objects, key=lambda o: (o.row, o.col))
            assert parse_caption(caption) == [o.description for o in ordered]
            # each relation is what the positions say
            expected = ["left of" if b.row == a.row else "above" for a, b in zip(ordered, ordered[1:], strict=False)]
            assert parse_relations(caption) == expected
            # and the vocabulary round-trips
            assert data.vocab.decode(data.vocab.encode(caption)) == caption


def test_objects_are_drawn_where_the_scene_graph_says(splits):
    data = splits["train"]
    for i in range(len(data)):
        n = int(data.num_objects[i])
        assert 2 <= n <= 4
        assert not data.masks[i, n:].any()  # padding objects are empty
        for k, obj in enumerate(data.objects[i]):
            mask = data.masks[i, k]
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) == obj.box
            # the pixels under the mask have the object's colour (up to shade and noise)
            rgb = data.images[i][:, mask].mean(dim=1)
            nearest = min(COLOURS, key=lambda c: float(((rgb - torch.tensor(COLOURS[c])) ** 2).sum()))
            assert nearest == obj.colour
            # each object lies in exactly one grid cell: its own
            cells = data.cells[i, k]
            assert cells.sum() == 1 and cells[obj.row, obj.col]
        # no two objects share a cell
        assert len({(o.row, o.col) for o in data.objects[i]}) == n


def test_heldout_combinations_only_in_the_heldout_split(splits):
    for name, data in splits.items():
        has = [any((o.colour, o.shape) in HELDOUT_COMBOS for o in objs) for objs in data.objects]
        if name == "heldout":
            assert all(has)
        else:
            assert not any(has), name
    # every colour and every shape is still seen in training
    train = splits["train"]
    assert {o.colour for objs in train.objects for o in objs} == set(COLOURS)
    assert {o.shape for objs in train.objects for o in objs} == set(SHAPES)


def test_all_shapes_colours_and_sizes_occur(splits):
    objs = [o for objs in splits["train"].objects for o in objs]
    assert {o.size for o in objs} == {"small", "large"}
    assert {o.shape for o in objs} == set(SHAPES)


def test_caption_relations_example():
    img, objs, masks = generate_scene(np.random.default_rng(0))
    assert img.shape == (3, 32, 32) and masks.shape == (len(objs), 32, 32)
    assert caption_from_objects(objs).startswith("a ")
    with pytest.raises(ValueError, match="at least one object"):
        caption_from_objects([])


def test_cell_masks_and_vocab_errors():
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[0, 9, 17] = True  # row 1, col 2 of a 4×4 grid of 8-pixel cells
    cm = cell_masks(m)
    assert cm.shape == (2, 4, 4) and cm[0, 1, 2] and cm.sum() == 1
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Vocab().encode("a purple circle")
    with pytest.raises(ValueError, match="multiple of grid"):
        cell_masks(torch.zeros(1, 30, 30, dtype=torch.bool))


def test_doctor_hooks():
    ok, message = scenes.available()
    assert ok and message
    assert scenes.NOTEBOOKS == ["12_image_captioning"] and isinstance(scenes.FIX, str)
