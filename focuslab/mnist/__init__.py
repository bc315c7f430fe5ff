"""The MNIST batch-size study (paper Fig. 2c/2d): data, batched MLP training, the scan."""
