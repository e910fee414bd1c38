# Mask2Former with a DiNAT-Large backbone (11x11 neighbourhoods) pre-trained on ImageNet-22K, COCO
# instance segmentation, large-scale jittering (1024x1024 crops), 100 epochs, fp32.
# Release recipe as the panoptic config (200 queries, drop path 0.3, the Mask2Former dilations,
# AdamW lr 1e-4 wd 0.05, backbone lr x0.1, clipping 0.01, 16 images per batch, 737,500 iterations
# with steps at 655,556 and 710,184). Release result: 50.8 mask AP (README.md).
# Model, pipeline, evaluator and optimiser come from mmdet's R-50 Mask2Former instance config.
_base_ = [
    'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
    './_base_/mask2former-paramwise.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT-Large checkpoint with 11x11 tables (see the panoptic config). A local
# file: --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224_11x11interp.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='large',
        kernel_size=11,
        dilations='mask2former',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(num_queries=200, in_channels=[192, 384, 768, 1536]))

# backbone lr x0.1, no decay on its `rpb` tables and norms, nor on the query / level embeddings
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, **_base_.mask2former_paramwise_cfg))

# 100 epochs: upstream's Swin-L schedule (evaluation every 5000 iterations and at the end)
max_iters = 737500
param_scheduler = dict(end=max_iters, milestones=[655556, 710184])
interval = 5000
dynamic_intervals = [(max_iters // interval * interval + 1, max_iters)]
train_cfg = dict(
    max_iters=max_iters,
    val_interval=interval,
    dynamic_intervals=dynamic_intervals)

# 8 GPUs x 2 images = 16 images per batch
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
