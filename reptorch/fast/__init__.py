"""Fast hand-written batched gradient oracles for the paper conv nets.

kernel.py: the forward/backward (TorchScript), over primitives.py's layer ops; inner_loop.py: the
k-step loop; convnet.py: the maths and dict interface; flat.py: flat parameter buffers;
oracle.py: work sharing over threads; chain.py: the exact chain on flat buffers; cores.py: free
cores; comm.py: thread meetings.

`fast_loss_and_grad_for(module)` returns a drop-in replacement for the vmapped autograd oracle
(`FunctionalModel.vmap_loss_and_grad()`) when `module` is an `OmniglotNet` or `MiniImageNetNet`,
and None otherwise.
"""

from reptorch.fast.convnet import MINIIMAGENET, OMNIGLOT, ConvNetSpec, logits, loss_and_grad
from reptorch.fast.oracle import ConvNetOracle, fast_logits_for, fast_loss_and_grad_for, spec_for

__all__ = [
    "MINIIMAGENET",
    "OMNIGLOT",
    "ConvNetOracle",
    "ConvNetSpec",
    "fast_logits_for",
    "fast_loss_and_grad_for",
    "logits",
    "loss_and_grad",
    "spec_for",
]
