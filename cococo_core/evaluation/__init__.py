"""The evaluation protocol behind ``python -m cococo_core evaluate``: datasets (:mod:`.dataset`), the
papers' sampling of frames, masks and prompts (:mod:`.protocol`), resumable sharded result files
(:mod:`.results`) and the per-video loop (:mod:`.runner`)."""
