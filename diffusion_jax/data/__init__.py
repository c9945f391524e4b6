"""Data: sources chosen by `config.data.dataset` and the grain input pipeline.

`sources` is the public API (`dataset_info`, `get_source`, `load_split`,
`describe`); `pipeline.make_loader` batches any of its sources. The modules
behind it: `folder`, `npz`, `cifar10`, `tfds_source` (+ the embedded
`digits` builder), `images` (decoding and fitting) and `base`.
"""
