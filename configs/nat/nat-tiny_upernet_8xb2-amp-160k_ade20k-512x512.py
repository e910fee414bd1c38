# UPerNet with a NAT-Tiny backbone, ADE20K 512x512, 160k iterations, fp16.
# NAT paper recipe: UPerHead (channels 512, pool scales 1/2/3/6) + FCN auxiliary head on stage 3
# (4C inputs, loss weight 0.4), AdamW lr 6e-5 wd 0.01, 1500-iter linear warmup then poly decay,
# 16 images per batch (8 GPUs x 2). Paper: 47.1 mIoU single-scale / 48.4 multi-scale (README.md).
# Multi-scale + flip evaluation (`tools/test.py CONFIG CKPT --tta`, ratios 0.5-1.75 with flips)
# uses `tta_model` (mmseg default_runtime) and `tta_pipeline` (mmseg ADE20K dataset base).
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    './_base_/nat-backbone.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K NAT-Tiny checkpoint, loaded as is (downloaded once into torch hub's
# cache; no conversion needed for segmentation, see configs/nat/README.md). To use a local
# file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_tiny.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        **_base_.nat_backbone,  # NAT, 7x7 neighbourhoods, stages 0-3 out, nothing frozen
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        in_channels=[64, 128, 256, 512],
        in_index=[0, 1, 2, 3],
        channels=512,
        pool_scales=(1, 2, 3, 6),
        num_classes=150),
    auxiliary_head=dict(
        in_channels=256,
        in_index=2,
        num_classes=150,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))

# fp16; on a machine without CUDA tools/train.py falls back to fp32 OptimWrapper.
# No weight decay on `rpb` tables, LayerNorms and layer-scale vectors (`nat_paramwise_cfg`).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=_base_.nat_paramwise_cfg)

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=160000,
        by_epoch=False)
]

# 8 GPUs x 2 images = 16 images per batch (`--auto-scale-lr` rescales the lr for other totals).
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
