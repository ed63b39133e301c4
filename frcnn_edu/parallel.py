"""Using every CPU core for torchvision's single-threaded kernels.

torchvision's CPU kernels for RoI pooling and NMS work through their input on one thread, while
the convolutions around them use all of torch's intra-op threads: on a 2-core CPU, RoI pooling
and the proposal layer's NMS run at half the machine's speed. Their work splits into independent
pieces (RoIs; images of a batch), and the kernels release Python's GIL while they run, so
frcnn_edu hands the pieces to a small pool of threads, one per torch thread.

Nothing changes but the speed: each piece is computed by the same kernel as in one call, and the
results are put back in order. On CUDA, with one torch thread, or with a single piece, the work
runs as plain calls on the calling thread.

`parallel_map` is the generic tool (the proposal layer maps NMS over the images of a batch);
`roi_pool_threaded` is the fast path of `frcnn_edu.roi.roi_pool`, kept here so that roi.py holds
only the RoI pooling itself.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torchvision

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def num_workers(device) -> int:
    """How many pieces CPU work is split into: torch's thread count on the CPU, 1 elsewhere."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def parallel_map(fn, items, device, min_items: int = 2) -> list:
    """[fn(item) for item in items], spread over num_workers(device) threads on the CPU.

    With fewer than min_items items everything runs on the calling thread (a hand-off costs
    tens of microseconds, and after an OpenMP region torch's own threads keep spinning for a
    while). Grad mode and inference mode are thread-local in PyTorch; the workers get the caller's.
    """
    items = list(items)
    workers = min(num_workers(device), len(items))
    if workers < 2 or len(items) < min_items:
        return [fn(item) for item in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def call(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    # One pool per process: a forked child inherits the parent's pool object but not its threads.
    # The workers run one torch thread each (their kernels are single-threaded anyway).
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="frcnn_edu",
                                         initializer=torch.set_num_threads, initargs=(1,))
    return list(_pools[key].map(call, items))


# ----------------------------------------------------------------------------------------------
# RoI max pooling with the RoIs split over the threads
# ----------------------------------------------------------------------------------------------

# RoIs are split over the CPU's threads only in chunks of at least this many: below that, a
# thread hand-off costs more than it saves (measured with bench/).
MIN_ROIS_PER_CHUNK = 128


def roi_pool_threaded(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                      spatial_scale: float) -> torch.Tensor:
    """torchvision.ops.roi_pool(features, rois, output_size, spatial_scale), the same bit for bit.

    On the CPU with several torch threads and at least 2 * MIN_ROIS_PER_CHUNK RoIs, the RoIs are
    split over the threads (`_ThreadedRoIPool`); otherwise this is one plain kernel call.
    output_size is a pair (h, w); the arguments are not checked here (`roi.roi_pool` does that).
    """
    if len(rois) >= MIN_ROIS_PER_CHUNK * 2 and num_workers(features.device) > 1:
        return _ThreadedRoIPool.apply(features, rois, output_size, spatial_scale)
    return torchvision.ops.roi_pool(features, rois, output_size, spatial_scale)


class _ThreadedRoIPool(torch.autograd.Function):
    """torchvision's RoI pooling kernel with the RoIs split over the CPU's threads.

    The CPU kernel is single-threaded (see the module docstring). Forward: each chunk of RoIs is
    pooled by the kernel, which also returns the argmax of every bin (int32). Backward: ONE call of
    torchvision's backward kernel with all the argmaxes, so gradients that several RoIs send to
    the same feature are summed in exactly the order of an unsplit call: bit for bit the same.
    """

    @staticmethod
    def forward(ctx, features, rois, size, spatial_scale):
        features = features.contiguous()   # once, not once per chunk inside the kernel
        output = features.new_empty((len(rois), features.shape[1], *size))
        argmax = torch.empty(output.shape, dtype=torch.int32)          # the kernel's argmax type
        # A few chunks per thread, each copied into place as soon as it is done: the chunks'
        # own outputs never all exist at once (peak memory stays near that of one call).
        chunks = max(1, min(4 * num_workers(features.device), len(rois) // MIN_ROIS_PER_CHUNK))
        bounds = torch.linspace(0, len(rois), chunks + 1).long().tolist()

        def pool_chunk(start_end):
            start, end = start_end
            out, arg = torch.ops.torchvision.roi_pool(features, rois[start:end], spatial_scale, *size)
            output[start:end], argmax[start:end] = out, arg

        parallel_map(pool_chunk, zip(bounds[:-1], bounds[1:]), features.device)
        ctx.save_for_backward(rois, argmax)
        ctx.size, ctx.spatial_scale, ctx.features_shape = size, spatial_scale, features.shape
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        rois, argmax = ctx.saved_tensors
        grad_features = torch.ops.torchvision._roi_pool_backward(
            grad_output.contiguous(), rois, argmax, ctx.spatial_scale, *ctx.size, *ctx.features_shape)
        return grad_features, None, None, None
