"""Fast hand-written batched gradient oracles for the paper conv nets.

kernel.py: the forward/backward/inner loop (TorchScript); convnet.py: its maths and dict interface;
flat.py: flat parameter buffers; oracle.py: work sharing over threads; comm.py: thread meetings.

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
