"""CoCoCo training: data preparation, training masks, the clip dataset and the motion-module recipe."""
