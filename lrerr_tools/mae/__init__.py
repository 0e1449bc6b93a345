"""The masked autoencoder of LRErr (paper §III.B): model, key-region masking, training, loading."""
