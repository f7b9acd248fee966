"""Data: the synthetic scenes and the input pipeline (nothing is imported here).

Synthetic scenes: ``cameras_np`` (numpy cameras and the conventions), ``scenes`` (scene
sampling), ``intersect`` (ray–primitive hits), ``raycast`` (rendering, examples) and the
TFDS builder ``synthetic_scenes``. Input pipeline: ``pipeline`` (``prepare``, the train
and eval iterators) over ``sources``, ``preprocess`` and ``bad_records``.
"""
