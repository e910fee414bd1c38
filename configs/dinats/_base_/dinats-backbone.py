# What every DiNAT_s dense-prediction config (Mask R-CNN, Cascade Mask R-CNN, UPerNet; every size)
# repeats about the backbone. A config lists this file next to its upstream mmdet / mmseg base,
#   _base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
#             './_base_/dinats-backbone.py']
# and uses the two variables below as
#   backbone=dict(_delete_=True, **_base_.dinats_backbone, arch=..., dilations=..., ...)
#   optim_wrapper=dict(..., paramwise_cfg=_base_.dinats_paramwise_cfg)
# mmengine allows no key in two bases of one config, so this file cannot set `model` or
# `optim_wrapper` itself. The variables are read once, when a config is loaded: to change a run,
# override `model.backbone.*` or `optim_wrapper.paramwise_cfg.*`, not them.

# Swin's interface: 7x7 neighbourhoods, the four stages out (strides 4 to 32), nothing frozen, no
# activation checkpointing. Size, dilations, drop path and checkpoint are set by each config.
dinats_backbone = dict(
    type='DiNATs',
    kernel_size=7,
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    with_cp=False)

# No weight decay on relative positional bias tables (`rpb`) and LayerNorms (`norm`), as the
# release's configs (DiNAT_s has no layer scale).
dinats_paramwise_cfg = dict(
    custom_keys={
        'rpb': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    })
