"""Fast inference and long contexts, one file per technique (as LLMs-from-scratch's bonus folders).

Each module here builds one idea from scratch on the course's attention
(:mod:`course_utils.attention`), KV-cache interface (:mod:`course_utils.kv_cache`) and decoding
loop (:mod:`course_utils.decoding`), and is tested equal to a reference. Import the module you
need, e.g. ``from course_utils.inference import paged_cache``: nothing is imported here, so
that one technique's optional dependencies never slow down or break another's import.
"""
