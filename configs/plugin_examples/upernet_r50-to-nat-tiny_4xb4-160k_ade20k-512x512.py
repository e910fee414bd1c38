# Plug-in recipe: an UNMODIFIED mmseg config (ResNet-50 UPerNet, 160k, ADE20K 512x512) with its
# backbone swapped for localattn's NAT-Tiny. The pieces every swap needs:
#   1. `custom_imports` loads localattn, which registers NAT / DiNAT / QnAViT in mmseg's registry;
#   2. `pretrained=None` on the model: the base sets `model.pretrained='open-mmlab://resnet50_v1c'`,
#      which mmseg's EncoderDecoder would pass to the new backbone as an unknown argument;
#   3. `backbone=dict(_delete_=True, ...)` drops every ResNetV1c argument (depth, dilations,
#      norm_cfg, contract_dilation, ...) instead of merging them into the new backbone;
#   4. the heads' channels follow the backbone's outputs C, 2C, 4C, 8C: UPerHead `in_channels`
#      (all four, in_index 0-3) and the auxiliary FCNHead on stage 3 (`in_index=2`, 4C channels).
# The data preprocessor (mean/std, size=crop_size) and the heads' SyncBN stay the upstream ones
# (a single-process run turns SyncBN into BN automatically). The base's SGD (lr 0.01) suits
# ResNets, not these transformers, so this example also switches to the AdamW setting and the
# schedule of configs/nat (step 5, optional but recommended); see configs/nat for the full recipes.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K NAT-Tiny checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_tiny.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth'

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='NAT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=256, in_index=2))

# 5. (recommended) AdamW without weight decay on rpb tables, norms and layer scale, and a schedule
#    that suits it: the base's PolyLR decays towards eta_min=1e-4, above this lr of 6e-5, so it
#    is replaced by the NAT recipe's 1500-iteration warmup + poly decay to 0.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'rpb': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'gamma': dict(decay_mult=0.)
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
