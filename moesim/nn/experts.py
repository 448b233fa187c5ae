"""The routed experts of one MoE layer, stored as stacked weights, and the grouped GEMM.

Shape legend: E experts, D d_model, F expert hidden, N rows (token copies) sorted by expert,
C rows per expert after padding.

Weights are stacked per expert (``w_gate_EDF``, ``w_up_EDF``, ``w_down_EFD``; torchtitan's
layout) so that one grouped GEMM runs every expert on its contiguous slice of sorted rows.
``grouped_forward`` runs one of three kernels (``RoutedExperts.impl``):

- ``"grouped_mm"``: ``torch._grouped_mm`` with the experts' end offsets. Private API. In torch
  2.13 it runs on the CPU too (fp32/bf16/fp16, int32 offsets, rows a multiple of 16 bytes;
  its backward wants a contiguous output gradient, which the dispatcher's gate weighting
  gives it) and on CUDA, where it is fast on sm90+ in bf16 (STYLE.md §10).
- ``"padded"``: MegaBlocks' padded form. Every expert's rows are copied into a zero-padded
  (E, C, D) batch, three ``torch.bmm`` run all experts at once, and the rows are read back.
  C is the capacity when there is one (no host sync); dropless, it is the largest expert's
  row count, read back once (one host sync per call). Padding costs E·C − N wasted rows, which
  grows with imbalance. Run only when ``impl`` asks for it (not measured on a GPU yet).
- ``"loop"``: a Python loop over the experts' contiguous slices (one host sync for the split
  sizes); the reference that ``dispatch_loop`` and ``FlopCounterMode`` use.

``impl=None`` (the default) runs ``torch._grouped_mm`` where it is supported (device, dtype,
row alignment) and the loop elsewhere (``grouped_kernel``, which gives the measurements behind
the choice).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from moesim.nn.ffn import GATED, activation

GroupedImpl = Literal["grouped_mm", "padded", "loop"]
IMPLS: tuple[GroupedImpl, ...] = ("grouped_mm", "padded", "loop")


def grouped_mm_supported(x: torch.Tensor, *dims: int) -> bool:
    """Whether ``torch._grouped_mm`` is the kernel to run for rows like ``x`` with inner sizes
    ``dims``: CUDA sm90+ in bf16, or the CPU in fp32/bf16/fp16 where this torch has a CPU
    kernel (probed once; torch 2.13 has), with 16-byte-aligned rows."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if not all((d * x.element_size()) % 16 == 0 for d in dims):
        return False
    if x.is_cuda:
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)
    return x.device.type == "cpu" and CPU_GROUPED_MM


def _probe_cpu_grouped_mm() -> bool:
    """One tiny forward and backward of ``torch._grouped_mm`` on the CPU (older torch had
    CUDA kernels only). Run once at import, not on first use: a first use may sit inside a
    ``FlopCounterMode`` or a dispatch-tracing mode, which would count the probe."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.ones(3, 8, requires_grad=True)
        w = torch.ones(2, 8, 4, requires_grad=True)
        y = torch._grouped_mm(x, w, offs=torch.tensor([1, 3], dtype=torch.int32))
        y.backward(torch.ones_like(y))
        return bool(y[0, 0] == 8.0)
    except (RuntimeError, NotImplementedError):
        return False


CPU_GROUPED_MM = _probe_cpu_grouped_mm()


def grouped_kernel(x: torch.Tensor, d_model: int, hidden: int, bounded: bool) -> GroupedImpl:
    """The kernel ``impl=None`` runs. ``bounded``: a capacity bounds each expert's rows.

    1. ``torch._grouped_mm`` wherever it is supported (see ``grouped_mm_supported``).
    2. Else the loop, on the CPU and on CUDA alike (A100, or fp32 on Hopper), with or without a
       capacity. Under a capacity the padded ``bmm`` needs no host sync on CUDA, but it has not
       been measured on a GPU, and on the CPU it was slower than the loop (below); so it stays
       a choice (``impl="padded"``) until a GPU measurement says it is faster. ``bounded`` is
       for that rule: today it changes nothing.

    Measured on the 2-core CPU, forward+backward, median of 7 interleaved runs (two runs;
    one sample disturbed by other load left out), 2048 rows (6144 for E=64), counts balanced
    or Zipf-skewed; fp32 ``_grouped_mm`` / loop / padded:

    - tiny-moe's shape (E=8, D=F=256): balanced 8.9–10.8 / 9.5–9.6 / 12.4 ms, skewed
      8.9–9.2 / 10.0–12.4 / 25–27 ms;
    - Mixtral-like (E=8, D=512, F=1792): balanced 114–118 / 119–128 / 113–143 ms, skewed
      115–121 / 121–125 / 341–356 ms;
    - fine-grained (E=64, D=512, F=128): balanced 37–40 / 46–49 / 41–51 ms, skewed
      40–41 / 48–53 / 629–689 ms;
    - bf16, tiny-moe's shape: 7.0–7.2 / 7.4–8.3 / 6.4–13 ms.

    So ``_grouped_mm`` is the fastest, or within 11% of it, everywhere. The padded form beat
    the loop only balanced with many small experts (9%), was 2.2–13× slower skewed and
    dropless (E·max rows for N), and 4–49% slower under capacity factor 1.25: on the CPU the
    loop is the better fallback (for fp64 or unaligned rows, where ``_grouped_mm`` does not
    run)."""
    return "grouped_mm" if grouped_mm_supported(x, d_model, hidden) else "loop"


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: ``torch._grouped_mm``'s backward
    refuses a broadcast gradient (``y.sum().backward()`` gives one, with strides 0)."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class RoutedExperts(nn.Module):
    """E independent FFNs of hidden size F (fine-grained experts are simply small F)."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, kind: str = "swiglu"):
        super().__init__()
        self.n_experts, self.d_model, self.hidden, self.kind = n_experts, d_model, hidden, kind
        self.act = activation(kind)
        # None: pick by device and dtype (``grouped_kernel``); or one of IMPLS to force it
        self.impl: GroupedImpl | None = None
        E, D, F = n_experts, d_model, hidden
        self.w_gate_EDF = nn.Parameter(torch.empty(E, D, F)) if kind in GATED else None
        self.w_up_EDF = nn.Parameter(torch.empty(E, D, F))
        self.w_down_EFD = nn.Parameter(torch.empty(E, F, D))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        for w in (self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD):
            if w is not None:
                nn.init.normal_(w, std=std)

    def expert_weights(self) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
        """Per-expert (gate, up, down) views from one ``unbind`` of each stacked weight.

        Why not ``w[e]`` per expert: autograd then materialises a full (E, D, F) zero gradient
        for every expert and adds them up, E²·D·F memory traffic in the backward (measured on
        the 2-core CPU, E=32, D=F=512, 1024 rows: forward+backward 1.77 s with ``w[e]``, 0.21 s
        with ``unbind``, whose backward stacks the E gradients once)."""
        gates = (
            self.w_gate_EDF.unbind(0) if self.w_gate_EDF is not None else [None] * self.n_experts
        )
        return list(zip(gates, self.w_up_EDF.unbind(0), self.w_down_EFD.unbind(0), strict=True))

    def expert_forward(self, weights, x_ND: torch.Tensor) -> torch.Tensor:
        """One expert's FFN on its rows, ``weights`` one entry of ``expert_weights()``."""
        w_gate_DF, w_up_DF, w_down_FD = weights
        up_NF = x_ND @ w_up_DF
        h_NF = self.act(x_ND @ w_gate_DF) * up_NF if w_gate_DF is not None else self.act(up_NF)
        return h_NF @ w_down_FD

    def kernel(self, x_ND: torch.Tensor, bounded: bool = False) -> GroupedImpl:
        """The kernel ``grouped_forward`` runs for rows like ``x_ND`` (``bounded``: with a
        capacity, i.e. ``max_rows`` given)."""
        if self.impl is None:
            return grouped_kernel(x_ND, self.d_model, self.hidden, bounded)
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)} or None, got {self.impl!r}")
        return self.impl

    def grouped_forward(
        self, x_ND: torch.Tensor, counts_E: torch.Tensor, max_rows: int | None = None
    ) -> torch.Tensor:
        """All experts on rows sorted by expert, ``counts_E[e]`` rows for expert e.
        ``max_rows``: a bound on any ``counts_E[e]`` known to the caller (the capacity), which
        spares the padded kernel its host sync."""
        impl = self.kernel(x_ND, bounded=max_rows is not None)
        if impl == "grouped_mm":
            return _ContiguousGrad.apply(self._grouped_mm(x_ND, counts_E))
        if impl == "padded":
            return self._padded(x_ND, counts_E, max_rows)
        slices = torch.split(x_ND, counts_E.tolist())  # one host sync for the split sizes
        weights = self.expert_weights()
        outs = [self.expert_forward(w, s) for w, s in zip(weights, slices, strict=True)]
        return torch.cat(outs) if outs else x_ND.new_zeros(0, self.d_model)

    def _ffn_batched(self, mm, x, w_gate, w_up, w_down):
        up = mm(x, w_up)
        h = self.act(mm(x, w_gate)) * up if w_gate is not None else self.act(up)
        return mm(h, w_down)

    def _grouped_mm(self, x_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        offs_E = torch.cumsum(counts_E, 0).to(torch.int32)  # end offset of each expert's rows
        dt = x_ND.dtype
        w_gate = self.w_gate_EDF.to(dt) if self.w_gate_EDF is not None else None

        def mm(a, b):
            return torch._grouped_mm(a, b, offs=offs_E)

        return self._ffn_batched(mm, x_ND, w_gate, self.w_up_EDF.to(dt), self.w_down_EFD.to(dt))

    def padded_forward(self, x_ECD: torch.Tensor) -> torch.Tensor:
        """All experts at once on a padded batch: expert e's rows are ``x_ECD[e]`` (zero rows
        pad it; they give zero outputs and add nothing to the weight gradients)."""
        dt = x_ECD.dtype
        w_gate = self.w_gate_EDF.to(dt) if self.w_gate_EDF is not None else None
        return self._ffn_batched(
            torch.bmm, x_ECD, w_gate, self.w_up_EDF.to(dt), self.w_down_EFD.to(dt)
        )

    def padded_rows(
        self, x_ND: torch.Tensor, expert_N: torch.Tensor, place_N: torch.Tensor, C: int
    ) -> torch.Tensor:
        """Each row's expert output through the padded batch, with no host sync: row n goes to
        slot expert·C + place of a zero-padded (E·C, D) batch, one ``padded_forward`` runs, and
        the outputs are read back in row order. A row whose place is C or more (dropped by a
        capacity) goes to a spare slot past the batch and its output is masked to 0: not read
        from a real row and scaled by 0, which an inf there (bf16 overflow) makes NaN."""
        E, D = self.n_experts, x_ND.shape[1]
        keep_N = place_N < C
        slot_N = torch.where(keep_N, expert_N * C + place_N, E * C)  # E·C: the spare slot
        x_SD = x_ND.new_zeros(E * C + 1, D).index_copy(0, slot_N, x_ND)
        y_SD = self.padded_forward(x_SD[: E * C].view(E, C, D)).view(E * C, D)
        y_ND = y_SD[slot_N.clamp(max=E * C - 1)]  # padding rows unread
        return torch.where(keep_N[:, None], y_ND, 0.0)

    def _padded(
        self, x_ND: torch.Tensor, counts_E: torch.Tensor, max_rows: int | None
    ) -> torch.Tensor:
        E, (N, D) = self.n_experts, x_ND.shape
        if N == 0:
            return x_ND.new_zeros(0, D)
        # rows per expert after padding: the caller's bound, else the largest expert's count
        C = min(max_rows, N) if max_rows is not None else int(counts_E.max())  # host sync
        experts = torch.arange(E, device=x_ND.device)
        expert_N = torch.repeat_interleave(experts, counts_E, output_size=N)
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        place_N = torch.arange(N, device=x_ND.device) - starts_E[expert_N]
        return self.padded_rows(x_ND, expert_N, place_N, C)
