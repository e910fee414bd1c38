# DiNAT_s-Tiny (Swin-T's skeleton with NA / dilated NA blocks), ImageNet-1K classification from
# scratch, 300 epochs, 224x224, the ImageNet dilations at 224 px.
# Recipe, schedule and optimiser as the NAT-Tiny config (mmpretrain's Swin recipe: 1024 images per
# batch, AdamW lr 1e-3, wd 0.05, 20-epoch warmup + cosine, RandAugment, Mixup / CutMix, label
# smoothing 0.1); the release's dinat_s_tiny.yml has the same batch, lr, wd, warmup and epochs.
# Release result: 81.8 top-1 (README.md).
# Official weights (to evaluate, see README.md; not used for training):
#   https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth
_base_ = '../nat/nat-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNATs',
        arch='tiny',
        kernel_size=7,
        dilations='imagenet',
        drop_path_rate=0.2,
        out_indices=(3, )),
    head=dict(in_channels=768))
