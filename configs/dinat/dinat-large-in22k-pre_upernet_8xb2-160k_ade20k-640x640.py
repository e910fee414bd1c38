# UPerNet with a DiNAT-Large backbone pre-trained on ImageNet-22K, ADE20K 640x640, 160k iterations,
# fp32 (the release disables fp16 for DiNAT-Large). Release recipe: UPerHead (channels 512, pool
# scales 1/2/3/6) + FCN auxiliary head on stage 3 (loss weight 0.4), AdamW lr 6e-5 wd 0.01 (none on
# `rpb` tables and norms), 1500-iter linear warmup then poly decay, 16 images per batch (8 GPUs x 2),
# drop path 0.3, the 640-px dilations (`'ade20k-640'`).
# Release result: 54.0 mIoU single-scale / 54.9 multi-scale (README.md).
# mmseg ships no 640x640 Swin UPerNet, so this config lists the bases mmseg's Swin UPerNet configs are
# made of, with mmseg's 640x640 ADE20K dataset base (test scale 2560x640, TTA ratios 0.5-1.75 with
# flips: `tools/test.py CONFIG CKPT --tta`).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT-Large checkpoint (its 21841-class head is dropped on loading;
# downloaded once into torch hub's cache). To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_large_in22k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth'

crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='large',
        kernel_size=7,
        dilations='ade20k-640',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        with_cp=False,
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

# fp32; no weight decay on relative positional bias tables (`rpb`) and LayerNorms (`norm`)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

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
