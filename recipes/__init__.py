"""Training recipes on the `training/` plumbing: the three-stage curriculum (`recipes/curriculum/`) and SSLAM
pre-training (`sslam_pretrain.py`)."""
