# UPerNet + FCN auxiliary head on a tiny QnA-ViT (QnA stages + window self-attention stages),
# trained from scratch on the synthetic shapes dataset. Same data, schedule, TTA and data-root
# overrides as upernet_nat-demo_synthetic-128x128.py.
_base_ = ['./upernet_nat-demo_synthetic-128x128.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='QnAViT',
        # widths 32/64/128/256; windows of 8 (stride 16) and 4 (stride 32) cover a 128x128 input
        arch=dict(embed_dims=32, qna_depths=(1, 1, 1, 0), msa_depths=(0, 0, 1, 1),
                  qna_heads=(2, 4, 8, 16), msa_heads=(1, 2, 4, 8), window_sizes=(7, 7, 8, 4),
                  qna_kernel_size=3, mlp_ratio=2),
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3)))

optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, custom_keys={
        'norm': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        '.rpb': dict(decay_mult=0.),
        '.attn_scale': dict(decay_mult=0.),
        '.query': dict(decay_mult=0.),
    }))
