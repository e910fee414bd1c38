"""Model analysis helpers: parameters and FLOPs with attention counted analytically."""
from .complexity import (FunctionCounter, analytic_flop_counting, count_flops_params, na_macs,
                         register_function_counter, unregister_function_counter)

__all__ = ['count_flops_params', 'analytic_flop_counting', 'register_function_counter',
           'unregister_function_counter', 'na_macs', 'FunctionCounter']
