"""Model analysis helpers: parameters and FLOPs with attention counted analytically (by layer type,
:mod:`.complexity`), and backbones built from short specs (:mod:`.models`)."""
from .complexity import AttentionFlopAnalyzer, count_flops_params, register_module_counter, unregister_module_counter

__all__ = ['count_flops_params', 'AttentionFlopAnalyzer', 'register_module_counter', 'unregister_module_counter']
