# Plug-in recipe: an UNMODIFIED mmdet config (ResNet-50 Mask R-CNN, 1x, COCO) with its backbone
# swapped for localattn's NAT-Tiny. The pieces every swap needs:
#   1. `custom_imports` loads localattn, which registers NAT / DiNAT / QnAViT in mmdet's registry;
#   2. `backbone=dict(_delete_=True, ...)` drops every ResNet argument (depth, norm_cfg, style,
#      ...) instead of merging them into the new backbone;
#   3. the neck's `in_channels` follow the backbone's outputs: C, 2C, 4C, 8C
#      (NAT/DiNAT mini/tiny and QnA-ViT tiny/small: 64; NAT small: 96; NAT base: 128; QnA base: 96).
# Everything else (heads, data, schedule) stays the upstream one. The base's SGD (lr 0.02) suits
# ResNets, not these transformers, so this example also switches to the AdamW setting of
# configs/nat (step 4, optional but recommended); see configs/nat for the full recipes.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K NAT-Tiny checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_tiny.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='NAT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

# 4. (recommended) AdamW without weight decay on rpb tables, norms and layer scale.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'gamma': dict(decay_mult=0.)
        }))
