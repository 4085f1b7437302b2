"""Learning: the MIL-PF head and its training, vmapped over runs in one compiled program.

`head` is the Flax head and its config, `attention` the local stream's hand-written gradient,
`batches` the device layout of packed bags, `train` the pure trainer and its host loop,
`sharding` the split over devices, `inference` the public `predict`, `checkpoint` and `convert`
the saved and imported heads.
"""
