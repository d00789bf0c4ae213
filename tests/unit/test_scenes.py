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
    caption_from_objects,
    caption_vocab,
    cell_masks,
    generate_scene,
    make_dataset,
    make_splits,
    parse_caption,
    parse_relations,
    render_scene,
)
from course_utils.datasets.vocab import Vocab


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
            ids = data.vocab.encode(caption.split(), add_bos=True, add_eos=True)
            assert " ".join(data.vocab.decode(ids)) == caption


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
    with pytest.raises(ValueError, match="objects must be a non-empty list of SceneObject"):
        caption_from_objects([])


def test_cell_masks_and_vocab_errors():
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[0, 9, 17] = True  # row 1, col 2 of a 4×4 grid of 8-pixel cells
    cm = cell_masks(m)
    assert cm.shape == (2, 4, 4) and cm[0, 1, 2] and cm.sum() == 1
    with pytest.raises(ValueError, match="'purple', which is not in this vocabulary"):
        caption_vocab().encode("a purple circle".split())
    with pytest.raises(ValueError, match="multiple of grid"):
        cell_masks(torch.zeros(1, 30, 30, dtype=torch.bool))


def test_doctor_hooks():
    ok, message = scenes.available()
    assert ok and message
    assert scenes.NOTEBOOKS == ["12_image_captioning"] and isinstance(scenes.FIX, str)


def test_captions_use_the_one_vocab_with_the_old_ids():
    vocab = caption_vocab()
    assert isinstance(vocab, Vocab) and vocab.unk is None  # closed: an unknown word is an error
    # the ids the captioning models were trained with: <pad> <bos> <eos>, then the words
    assert vocab.itos == ["<pad>", "<bos>", "<eos>", "a", "small", "large", "red", "green", "blue",
                          "yellow", "magenta", "cyan", "circle", "square", "triangle", "cross",
                          "left", "of", "above"]
    assert (vocab.pad, vocab.bos, vocab.eos) == (0, 1, 2)


def test_render_scene_draws_the_layout_it_is_given():
    layout = [(9, "green", "cross"), (2, "red", "circle"), (15, "cyan", "triangle")]
    image, objects, masks = render_scene(np.random.default_rng(1), layout)
    assert [(o.row * 4 + o.col, o.colour, o.shape) for o in objects] == sorted(layout)
    for obj, mask in zip(objects, masks, strict=True):
        colour = torch.tensor(COLOURS[obj.colour])
        pixels = torch.from_numpy(image)[:, torch.from_numpy(mask)]  # (3, n) of this object
        assert ((pixels.mean(1) - colour * pixels.mean(1).max() / colour.max()).abs() < 0.2).all()
        ys, xs = np.nonzero(mask)
        assert ys.min() >= obj.row * 8 and ys.max() < obj.row * 8 + 8  # inside its cell
        assert xs.min() >= obj.col * 8 and xs.max() < obj.col * 8 + 8


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: generate_scene(np.random.default_rng(0), n_objects=(50, 60)), ValueError,
         r"n_objects must be \(lo, hi\) with 1 <= lo <= hi <= 16 .* got \(50, 60\)"),
        (lambda: generate_scene(np.random.default_rng(0), n_objects=(3, 2)), ValueError, "n_objects"),
        (lambda: generate_scene(np.random.default_rng(0), n_objects=(0, 2)), ValueError, "n_objects"),
        (lambda: generate_scene(0), TypeError, "rng must be a numpy Generator"),
        (lambda: generate_scene(np.random.default_rng(0), grid=0), ValueError, "grid must be a positive int"),
        (lambda: generate_scene(np.random.default_rng(0), image_size=16, grid=4), ValueError,
         "too small for the large shapes"),
        (lambda: generate_scene(np.random.default_rng(0), noise=-0.1), ValueError, "noise"),
        (lambda: generate_scene(np.random.default_rng(0), noise=float("nan")), ValueError, "noise"),
        (lambda: generate_scene(np.random.default_rng(0), allowed=[]), ValueError, "allowed must be a non-empty"),
        (lambda: generate_scene(np.random.default_rng(0), allowed=[("purple", "circle")]), ValueError,
         "allowed must hold"),
        (lambda: render_scene(np.random.default_rng(0), [(16, "red", "circle")]), ValueError,
         r"cell in \[0, 16\)"),
        (lambda: render_scene(np.random.default_rng(0), [(1, "red", "circle"), (1, "blue", "cross")]),
         ValueError, "at most one object per cell"),
        (lambda: render_scene(np.random.default_rng(0), []), ValueError, "layout must be a non-empty"),
        (lambda: make_dataset(0, seed=1), ValueError, "n must be a positive int"),
        (lambda: make_dataset(3, seed=-1), ValueError, "seed must be an int"),
        (lambda: make_dataset(3, seed=1, n_objects=(2, 40)), ValueError, "n_objects"),
        (lambda: make_dataset(3, seed=1, heldout="yes"), TypeError, "heldout must be True or False"),
        (lambda: make_dataset(3, seed=1, vocab=Vocab(["a"], unk=False)), ValueError, "lacks"),
        (lambda: make_splits(n_train=0), ValueError, "n_train must be a positive int"),
        (lambda: make_dataset(3, seed=1).subset([0, 5]), ValueError, r"positions in \[0, 3\)"),
        (lambda: make_dataset(3, seed=1).subset([0.5]), TypeError, "index must be"),
        (lambda: cell_masks(torch.zeros(4, dtype=torch.bool)), ValueError, r"\(\.\.\., H, W\)"),
        (lambda: cell_masks(torch.zeros(1, 8, 8, dtype=torch.bool), grid=0), ValueError, "grid"),
        (lambda: cell_masks([[True]]), TypeError, "masks must be a torch.Tensor"),
        (lambda: parse_caption(None), TypeError, "caption must be a list of str"),
        (lambda: parse_relations(3), TypeError, "caption must be a list of str"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
