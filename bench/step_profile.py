"""Where an exact inner step's time goes, per layer and per pass (docs/benchmarks.md).

    python -m bench.step_profile --setting mini --images 5     # one worker's share of 10 images
    python -m bench.step_profile --setting 20w1s --images 20
    python -m bench.step_profile --setting mini --images 5 --kernels aten  # PyTorch's passes

Profiles `ConvNetKernel.loss_and_grad` (run eagerly: the same ops as the scripted kernel, whose
per-op cost here is a few us against steps of ms) for one task with torch.profiler, one thread,
and gives each op to the layer whose activations it touches (by the sizes of its operands) and
to a pass (forward, then backward in reverse layer order, in the op order of the step); "other"
is what no layer's activations size: the classifier and loss, BatchNorm's per-channel
coefficients, views and slices.
"""

from __future__ import annotations

import argparse
import collections
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from bench.steps import SETTINGS, Setting, key
from reptorch.config import KERNELS
from reptorch.fast import fused
from reptorch.fast.convnet import ConvNetSpec
from reptorch.fast.kernel import ConvNetKernel
from reptorch.fast.oracle import spec_for, to_gemm


def layer_sides(spec: ConvNetSpec, side: int) -> list[int]:
    """The input side of each conv layer (TF 'same': ceil division)."""
    sides = []
    for _ in range(spec.layers):
        sides.append(side)
        side = -(-side // spec.stride)
        if spec.pool:
            side = -(-side // 2)
    return sides


def _layer_of(shapes: list[list[int]], images: int, spec: ConvNetSpec, sides: list[int]):
    """The layer whose activations an op touches: of its operands' layers (an operand of
    images x H x W elements in some dimension, or of spatial side H = W, for a layer's conv
    input or output), the first, whose activations are the largest."""
    flat, spatial = {}, {}
    for i, side in enumerate(sides):
        out = -(-side // spec.stride)
        flat.setdefault(images * out * out, i)
        for size in (side, out, side + 1, side + 2):  # padded inputs: the convs' 'same' borders
            spatial.setdefault(size, i)
    found = []
    for shape in shapes:
        found += [flat[size] for size in shape if size in flat and size > images]
        if len(shape) >= 4:  # (B, H, W, ...) channels-last, im2col's (B, Ho, Wo, 3, 3, C)
            for h, w in ((shape[2], shape[3]), (shape[1], shape[2])):
                if h == w and h in spatial:
                    found.append(spatial[h])
    return min(found) if found else None


def step_arguments(s: Setting, images: int) -> tuple[ConvNetSpec, tuple]:
    """The net's spec and the arguments of `loss_and_grad` for one task's step of `images`
    (seeded weights, random images and labels, one slice, no meetings, the summed loss)."""
    torch.manual_seed(0)
    net = s.network()
    spec = spec_for(net)
    names = spec.names()
    params = {
        k: to_gemm(k, v.detach()[None].clone(), batched=True) for k, v in net.named_parameters()
    }
    grads = [torch.empty_like(params[k]) for k in names]
    x = torch.rand(1, images, *s.image)
    y = torch.randint(0, s.ways, (1, images))
    return spec, ([params[k] for k in names], [x], [y], [grads], True, -1, 0, 0, images, 1.0)


def kernel_class(kernels: str) -> type:
    """The eager kernel of the blocks' passes: PyTorch's ("aten") or the native ones."""
    if kernels == "aten":
        return ConvNetKernel
    if not fused.available():  # also loads the ops the kernel calls
        raise SystemExit("the fused native ops did not build (g++ and ninja are needed)")
    return fused.FusedKernel


def profile_step(
    s: Setting, images: int, repeats: int, kernels: str = "aten"
) -> dict[tuple[str, str, str], float]:
    """Median ms per step of each (layer, pass, op); `kernels`: the blocks' passes."""
    spec, args = step_arguments(s, images)
    kernel = kernel_class(kernels)(*spec.kernel_shape())
    sides = layer_sides(spec, s.image[1])
    torch.set_num_threads(1)
    for _ in range(3):
        kernel.loss_and_grad(*args)
    runs = []
    for _ in range(repeats + 1):  # the first profile warms the profiler up: dropped
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            kernel.loss_and_grad(*args)
        table: dict[tuple[str, str, str], float] = collections.defaultdict(float)
        seen_backward = False
        top = [e for e in prof.events() if e.cpu_parent is None]  # outermost ops only
        for event in sorted(top, key=lambda e: e.time_range.start):
            name = event.name.replace("aten::", "")
            if name in ("logsumexp", "gather", "scatter_add_"):
                seen_backward = True  # the loss: the forward pass is over
            shapes = [list(sh) for sh in event.input_shapes if sh]
            layer = _layer_of(shapes, images, spec, sides)
            where = "other" if layer is None else f"layer {layer + 1}"
            direction = "backward" if seen_backward else "forward"
            table[(where, direction, _family(name))] += event.cpu_time_total / 1e3
        runs.append(table)
    runs = runs[1:]
    keys = set().union(*runs)
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


def _family(name: str) -> str:
    if "conv" in name:
        return "conv"
    if name in ("bmm", "baddbmm", "mm", "addmm"):
        return "gemm"
    if "pool" in name:
        return "pool"
    if name in ("copy_", "as_strided", "contiguous", "clone", "_to_copy", "add_", "zero_"):
        return "copies"
    if name.endswith(("im2col", "col2im")):  # the native passes: data movement
        return "copies"
    return "bn/relu/other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="mini", help="5w1s, 20w1s or mini")
    parser.add_argument("--images", type=int, default=None, help="default: the inner batch")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--kernels", choices=KERNELS, default="fused", help="block passes")
    args = parser.parse_args()
    s = next(x for x in SETTINGS if key(x) == args.setting)
    images = args.images or s.inner_batch
    table = profile_step(s, images, args.repeats, args.kernels)
    total = sum(table.values())
    print(
        f"{s.name}: one inner step of {images} images, one thread, {args.kernels} passes,"
        f" {total:.2f} ms"
    )
    print("| layer | pass | conv / gemm ms | pool ms | bn/relu/other ms | copies ms | total |")
    print("|---|---|---|---|---|---|---|")
    rows = sorted({(k[0], k[1]) for k in table}, key=lambda r: (r[1] != "forward", r[0]))
    for where, direction in rows:
        cell = {f: table.get((where, direction, f), 0.0) for f in
                ("conv", "gemm", "pool", "bn/relu/other", "copies")}  # fmt: skip
        part = sum(cell.values())
        print(
            f"| {where} | {direction} | {cell['conv'] + cell['gemm']:.2f} | {cell['pool']:.2f} |"
            f" {cell['bn/relu/other']:.2f} | {cell['copies']:.2f} | {part:.2f}"
            f" ({100 * part / total:.0f}%) |"
        )


if __name__ == "__main__":
    main()
