# UPerNet with a DiNAT_s-Large backbone pre-trained on ImageNet-22K, ADE20K 640x640, 160k
# iterations, fp16. Release recipe: as DiNAT_s-Tiny (UPerHead channels 512, pool scales 1/2/3/6, FCN
# auxiliary head on stage 3 with loss 0.4, AdamW lr 6e-5 wd 0.01 (none on `rpb` tables and norms),
# 1500-iter linear warmup then poly decay, 16 images per batch (8 GPUs x 2)) on 640x640 crops, drop
# path 0.3, the release's 640-px dilations (below).
# Release result: 53.4 mIoU single-scale / 54.6 multi-scale (README.md).
# mmseg ships no 640x640 Swin UPerNet, so this config lists the bases mmseg's Swin UPerNet configs are
# made of, with mmseg's 640x640 ADE20K dataset base (test scale 2560x640, TTA ratios 0.5-1.75 with
# flips: `tools/test.py CONFIG CKPT --tta`).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    './_base_/dinats-backbone.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT_s-Large checkpoint (its 21841-class head is dropped on loading;
# downloaded once into torch hub's cache). To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_s_large_in22k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth'

crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        **_base_.dinats_backbone,  # DiNAT_s, 7x7 neighbourhoods, stages 0-3 out, nothing frozen
        arch='large',
        # the release's DiNAT_s-Large ADE20K 640 dilations (no preset of DiNATs)
        dilations=[[1, 20], [1, 10], [1, 2, 1, 3, 1, 4, 1, 5] * 2 + [1, 5], [1, 2]],
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        in_channels=[192, 384, 768, 1536],
        in_index=[0, 1, 2, 3],
        channels=512,
        pool_scales=(1, 2, 3, 6),
        num_classes=150),
    auxiliary_head=dict(
        in_channels=768,
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
