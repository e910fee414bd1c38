# The optimiser parameter groups of the Mask2Former configs with a NAT-family backbone (DiNAT here;
# the keys also fit NAT and DiNATs). A config lists this file next to its upstream Mask2Former base,
#   _base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
#             './_base_/mask2former-paramwise.py']
# and uses it as
#   optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, **_base_.mask2former_paramwise_cfg))
# mmengine allows no key in two bases of one config, so this file holds a variable only; to change a
# run, override `optim_wrapper.paramwise_cfg.*`.
#
# What upstream's Swin Mask2Former configs do, with our module names: the backbone trains at 0.1x
# the lr; no weight decay on the backbone's relative positional bias tables and LayerNorms, nor on
# the head's query / level embeddings (and, through `norm_decay_mult`, the head's norms).
# mmengine matches `custom_keys` as substrings and the LONGEST matching key wins, so every no-decay
# key of the backbone is longer than 'backbone' (8 characters); upstream lists one key per Swin block
# for the same reason. Backbone parameter names they match (NAT / DiNAT / DiNATs):
#   patch_embed.norm.*, {levels|layers}.i.blocks.j.{norm1,norm2}.*, {levels|layers}.i.blocks.j.attn.rpb,
#   {levels|layers}.i.downsample.norm.*, norm0..norm3.* (the output norms).
m2f_backbone_no_decay = dict(lr_mult=0.1, decay_mult=0.0)
m2f_embed_no_decay = dict(lr_mult=1.0, decay_mult=0.0)
mask2former_paramwise_cfg = dict(
    custom_keys={
        'backbone': dict(lr_mult=0.1, decay_mult=1.0),
        'backbone.patch_embed.norm': m2f_backbone_no_decay,
        'backbone.norm': m2f_backbone_no_decay,  # output norms norm0..norm3
        '.downsample.norm': m2f_backbone_no_decay,
        '.norm1.weight': m2f_backbone_no_decay,
        '.norm1.bias': m2f_backbone_no_decay,
        '.norm2.weight': m2f_backbone_no_decay,
        '.norm2.bias': m2f_backbone_no_decay,
        '.attn.rpb': m2f_backbone_no_decay,
        'query_embed': m2f_embed_no_decay,
        'query_feat': m2f_embed_no_decay,
        'level_embed': m2f_embed_no_decay,
    },
    norm_decay_mult=0.0)
