# UPerNet with a QnA-ViT-Tiny backbone, ADE20K 512x512, 160k iterations, fp16.
# QnA-ViT has no published ADE20K results: this is the NAT/DiNAT UPerNet recipe applied as is
# (untuned; drop path = the ImageNet value of the arch): UPerHead (channels 512, pool scales
# 1/2/3/6) + FCN auxiliary head on stage 3 (4C inputs, loss weight 0.4), AdamW lr 6e-5 wd 0.01,
# 1500-iter linear warmup then poly decay, 16 images per batch (8 GPUs x 2).
# Multi-scale + flip evaluation (`tools/test.py CONFIG CKPT --tta`, ratios 0.5-1.75 with flips)
# uses `tta_model` (mmseg default_runtime) and `tta_pipeline` (mmseg ADE20K dataset base).
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    './_base_/qnavit-backbone.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# QnA-ViT ImageNet-1K checkpoint converted from the official Flax release with
#   python tools/model_converters/qnavit_flax_to_mmpretrain.py FLAX_CKPT checkpoints/qnavit-tiny_in1k.pth --arch tiny
# (an mmpretrain checkpoint: the backbone weights sit under `backbone.`). Local path; change it here
# or on the command line with --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/qnavit-tiny_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        **_base_.qnavit_backbone,  # QnAViT, stages 0-3 out, nothing frozen
        arch='tiny',
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
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
# No weight decay on LayerNorms, MSA relative position bias tables and the QnA parameters `rpb`,
# `attn_scale` and `query` (`qnavit_paramwise_cfg`).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=_base_.qnavit_paramwise_cfg)

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
