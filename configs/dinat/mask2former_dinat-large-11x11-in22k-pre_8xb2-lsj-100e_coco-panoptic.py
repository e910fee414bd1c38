# Mask2Former with a DiNAT-Large backbone (11x11 neighbourhoods) pre-trained on ImageNet-22K, COCO
# panoptic segmentation, large-scale jittering (1024x1024 crops), 100 epochs (737,500 iterations of
# 16 images, lr x0.1 at iterations 655,556 and 710,184), fp32.
# Release recipe (its mask2former/ configs, trained with the original Mask2Former code "with the same
# settings as the original Swin-L experiments"): 200 queries, drop path 0.3, the Mask2Former
# dilations, AdamW lr 1e-4 wd 0.05 with the backbone at 0.1x the lr, gradient clipping 0.01, no
# fp16, 16 images per batch (8 GPUs x 2). The schedule is upstream's Swin-L 100-epoch one.
# Release result: 58.5 PQ (README.md).
# Model, pipeline (LSJ), evaluators and optimiser come from mmdet's R-50 Mask2Former config; only
# the backbone, the head's inputs / queries, the parameter groups and the schedule change here.
_base_ = [
    'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
    './_base_/mask2former-paramwise.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT-Large checkpoint with its 7x7 tables resized to 11x11 (the release's
# "11x11interp" file; the 7x7 dinat_large_in22k_224.pth also loads, the backbone resizes the tables
# itself). Downloaded once into torch hub's cache. To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_large_in22k_224_11x11interp.pth
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
