# UPerNet with a DiNAT_s-Tiny backbone (Swin-T's skeleton with NA / dilated NA blocks), ADE20K
# 512x512, 160k iterations, fp16.
# Release recipe: UPerHead (channels 512, pool scales 1/2/3/6) + FCN auxiliary head on stage 3
# (4C inputs, loss weight 0.4), AdamW lr 6e-5 wd 0.01 (none on `rpb` tables and norms), 1500-iter
# linear warmup then poly decay, 16 images per batch (8 GPUs x 2), drop path 0.3, the ADE20K
# dilations. Release result: 46.0 mIoU single-scale / 47.4 multi-scale (README.md).
# Multi-scale + flip evaluation (`tools/test.py CONFIG CKPT --tta`, ratios 0.5-1.75 with flips)
# uses `tta_model` (mmseg default_runtime) and `tta_pipeline` (mmseg ADE20K dataset base).
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    './_base_/dinats-backbone.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K DiNAT_s-Tiny checkpoint, loaded as is (downloaded once into torch hub's
# cache). To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_s_tiny_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        **_base_.dinats_backbone,  # DiNAT_s, 7x7 neighbourhoods, stages 0-3 out, nothing frozen
        arch='tiny',
        dilations='ade20k',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        channels=512,
        pool_scales=(1, 2, 3, 6),
        num_classes=150),
    auxiliary_head=dict(
        in_channels=384,
        in_index=2,
        num_classes=150,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))

# fp16; on a machine without CUDA tools/train.py falls back to fp32 OptimWrapper.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=_base_.dinats_paramwise_cfg)

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
