# QnA-ViT-Base, ImageNet-1K classification from scratch, 300 epochs, with a 20-epoch warmup
# (5 for the smaller models). Everything else as the QnA-ViT-Tiny config. Paper: 83.9 top-1.
_base_ = './qnavit-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=768))

warmup_epochs = 20
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=warmup_epochs)
]
