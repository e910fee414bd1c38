# Isotropic NAT-Small (ViT-S widths: 16x16 patches, 12 NA blocks at stride 16, 7x7 neighbourhoods, no
# downsampling), ImageNet-1K classification from scratch, 300 epochs, 224x224, drop path 0.1.
# Recipe, schedule and optimiser as the NAT-Tiny config (mmpretrain's Swin recipe: 1024 images per
# batch, AdamW lr 1e-3, wd 0.05, 20-epoch warmup + cosine, RandAugment, Mixup / CutMix, label
# smoothing 0.1); the release's nat_isotropic_small.yml has the same batch, lr, wd, warmup and epochs.
# Release result: 80.0 top-1 (README.md).
# Official weights (to evaluate, see README.md; not used for training):
#   https://shi-labs.com/projects/dinat/checkpoints/isotropic/nat_isotropic_small_in1k_224.pth
_base_ = '../nat/nat-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='IsotropicNAT',
        arch='small',
        kernel_size=7,
        drop_path_rate=0.1,
        out_indices=(-1, )),  # the last block, through the final norm
    head=dict(in_channels=384))
