"""MoCo v2 pretraining on unlabelled faces (SCL-KD's first stage): model, augmentation, training."""
