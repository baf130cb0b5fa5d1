"""Scoring every image against every caption with stacked cross attention: pure pieces, a vectorised PyTorch path, a fused Triton path, and the dispatcher that picks one."""
