"""What every training recipe shares (DeepSpeed set-up, precision, schedules, checkpoints), and the SSLAM pre-training recipe."""
