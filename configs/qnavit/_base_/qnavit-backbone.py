# What every QnA-ViT dense-prediction config (Mask R-CNN, Cascade Mask R-CNN, UPerNet; every size)
# repeats about the backbone. A config lists this file next to its upstream mmdet / mmseg base,
#   _base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './_base_/qnavit-backbone.py']
# and uses the two variables below as
#   backbone=dict(_delete_=True, **_base_.qnavit_backbone, arch=..., drop_path_rate=..., init_cfg=...)
#   optim_wrapper=dict(..., paramwise_cfg=_base_.qnavit_paramwise_cfg)
# mmengine allows no key in two bases of one config, so this file cannot set `model` or
# `optim_wrapper` itself. The variables are read once, when a config is loaded: to change a run,
# override `model.backbone.*` or `optim_wrapper.paramwise_cfg.*`, not them.

# Swin's interface: the four stages out (strides 4 to 32), nothing frozen, no activation
# checkpointing. Size, drop path and checkpoint are set by each config.
qnavit_backbone = dict(
    type='QnAViT',
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    with_cp=False)

# No weight decay on LayerNorms, MSA relative position bias tables and the QnA parameters `rpb`,
# `attn_scale` and `query` (the official fine-tuning setting; QnAViT.no_decay_keys).
qnavit_paramwise_cfg = dict(
    custom_keys={
        'norm': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        '.rpb': dict(decay_mult=0.),
        '.attn_scale': dict(decay_mult=0.),
        '.query': dict(decay_mult=0.)
    })
