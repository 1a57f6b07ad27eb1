"""`tcpreuse lab --kernel NAME`: one lab run on a kernel of tcpreuse.kernels."""

from __future__ import annotations

from typing import Any

from ..errors import LabError, UnsupportedError
from ..lab.run import LabOptions
from ..result import RunResult
from . import LabJob, get_kernel


def lab_on(kernel: str, ref: str, overrides: dict[str, Any], opts: LabOptions) -> RunResult:
    """Run scenario `ref` (with `overrides`) in the lab on `kernel`; the same RunResult as
    run_lab, with the kernel named in meta["kernel_name"]."""
    k = get_kernel(kernel)
    job = LabJob(ref=ref, overrides=overrides, approximate=opts.approximate, netfilter=opts.netfilter,
                 capture=opts.capture is not None)
    if opts.capture is not None:  # written in the guest's share, copied here after the boot
        try:
            opts.capture.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabError(f"cannot create the capture directory {opts.capture}: {e.strerror}") from None
    _facts, outs = k.run([job], opts.progress, capture_to=opts.capture)
    out = outs[0] if outs else None
    if out is None:
        raise LabError(f"the lab on kernel {kernel} produced no result")
    if out.not_applicable:
        raise UnsupportedError(out.not_applicable + "; the lab cannot run this scenario there",
                               hint="use `tcpreuse simulate`, which models every kernel")
    if out.result is None:
        raise LabError(out.error or f"the lab on kernel {kernel} produced no result")
    out.result.meta["kernel_name"] = kernel
    return out.result
