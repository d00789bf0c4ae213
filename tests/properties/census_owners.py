"""Who owns each ``course_utils`` module, for the census report and its list of known failures.

A failure in a module of ``OPEN`` owners may be listed in ``census_known.json`` (it is handed to
them); the modules of every other owner must have none.
"""

from __future__ import annotations

OWNERS: dict[str, str] = {
    "course_utils.attention": "spine",
    "course_utils.positional": "spine",
    "course_utils.transformer": "spine",
    "course_utils.efficient": "spine",
    "course_utils.kv_cache": "spine",
    "course_utils.decoding": "spine",
    "course_utils.triton_attention": "spine",
    "course_utils.monitor": "spine",
    "course_utils.exercises.nb08": "spine",
    "course_utils.gpt": "gpt",
    "course_utils.datasets.pydoc_text": "gpt",
    "course_utils.exercises.nb07": "gpt",
    "course_utils.inference": "longctx",
    "course_utils.exercises.nb09": "longctx",
    "course_utils.seq2seq": "translation",
    "course_utils.datasets.translation": "translation",
    "course_utils.datasets.vocab": "translation",
    "course_utils.exercises.nb10": "translation",
    "course_utils.captioning": "vision-language",
    "course_utils.vqa": "vision-language",
    "course_utils.datasets.scenes": "vision-language",
    "course_utils.datasets.easy_vqa": "vision-language",
    "course_utils.datasets.questions": "vision-language",
    "course_utils.exercises.nb12": "vision-language",
    "course_utils.exercises.nb13": "vision-language",
    "course_utils.vit": "vit-rl",
    "course_utils.rl": "vit-rl",
    "course_utils.datasets.digits": "vit-rl",
    "course_utils.exercises.nb11": "vit-rl",
    "course_utils.exercises.nb14": "vit-rl",
    "course_utils.plotting": "basics",
    "course_utils.exercises.nb01": "basics",
    "course_utils.exercises.nb02": "basics",
    "course_utils.exercises.nb03": "basics",
    "course_utils.exercises.nb04": "basics",
    "course_utils.exercises.nb05": "basics",
    "course_utils.exercises.nb06": "basics",
    "course_utils.runtime": "platform",
    "course_utils.precision": "platform",
    "course_utils.distributed": "platform",
    "course_utils.training": "platform",
    "course_utils.timing": "platform",
    "course_utils.doctor": "platform",
    "course_utils.loading": "platform",
    "course_utils.process_guard": "platform",
    "course_utils.exercises.nb00": "platform",
    "course_utils.exercises.nb15": "platform",
    "course_utils.results": "reliability",
    "course_utils.files": "reliability",
    "course_utils.checkpoint": "reliability",
    "course_utils.download": "reliability",
    "course_utils.display": "reliability",
}

# Owners still at work on their files: their failures are listed for them, not fixed here.
OPEN = {"spine", "gpt", "longctx", "translation", "vision-language", "basics", "platform"}


def owner(name: str) -> str:
    """The owner of a public name (``course_utils.x.y.f``): the longest module prefix listed."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in OWNERS:
            return OWNERS[prefix]
    return "unowned"
