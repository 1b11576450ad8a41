"""SSLAM's self-supervised pre-training (EAT stage 1; mixtures and the source retention loss, stage 2) on the
`pal.training` plumbing: the recipe that produces the encoder (`pal sslam pretrain`)."""
