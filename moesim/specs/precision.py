"""Precision: the dtype of each kind of tensor, which sets bytes and the peak FLOP rate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moesim.specs.base import Spec

BYTES_PER_ELEMENT = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


class Precision(Spec):
    """``compute`` sets the GEMM peak; ``dispatch`` and ``combine`` the MoE all-to-all payloads.

    DeepSeek-V3 (report §3.3, "Low-Precision Communication"): the activation before the MoE
    up-projections is quantized to FP8 and then dispatched, and so is the activation gradient
    before the MoE down-projections (the backward of the combine, which travels like a
    dispatch); the forward and backward combine stay in BF16. So ``dispatch`` sets the forward
    dispatch and the backward of the combine, ``combine`` the forward combine and the backward
    of the dispatch.
    """

    compute: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    dispatch: Literal["bf16", "fp8"] = Field(
        "bf16",
        description="MoE dispatch payload: the forward dispatch and the combine's backward "
        "(gradients sent to the experts), as DeepSeek-V3 §3.3",
    )
    combine: Literal["bf16", "fp8"] = Field(
        "bf16",
        description="MoE combine payload: the forward combine and the dispatch's backward "
        "(DeepSeek-V3 keeps both in bf16, §3.3)",
    )
    params: Literal["bf16", "fp16", "fp32"] = "bf16"
    grads: Literal["bf16", "fp32"] = "bf16"
    master_weights: bool = True
    optimizer: Literal["adam", "sgd"] = "adam"
    # Adam's two moments; bf16 as in DeepSeek-V3 (report §3.3.3), master weights stay fp32
    optimizer_states: Literal["fp32", "bf16"] = "fp32"
    weights_inference: Literal["bf16", "fp8", "int8", "int4"] = "bf16"
    kv_cache: Literal["bf16", "fp8"] = "bf16"
    activation_storage: Literal["bf16", "fp8"] | None = Field(
        None,
        description="dtype in which the linear layers' cached inputs are kept for the backward "
        "(the attention output projection's and the experts' inputs, SwiGLU inputs): fp8 as "
        "DeepSeek-V3 §3.3.2; default fp8 with compute: fp8, else 16-bit",
    )

    @property
    def param_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.params]

    @property
    def grad_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.grads]

    @property
    def activation_bytes(self) -> float:
        """Stored activations stay in 16-bit even with fp8 GEMMs (Transformer Engine)."""
        return 4.0 if self.compute == "fp32" else 2.0

    @property
    def cached_gemm_input_bytes(self) -> float:
        """Bytes per element of what linear layers keep for their backward."""
        storage = self.activation_storage or ("fp8" if self.compute == "fp8" else None)
        return BYTES_PER_ELEMENT[storage] if storage else self.activation_bytes

    @property
    def dispatch_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.dispatch]

    @property
    def combine_bytes(self) -> float:
        """Bytes per element of the combine: fp8, or the activations' own width (bf16; an fp32
        model combines in fp32, as before this field existed)."""
        return 1.0 if self.combine == "fp8" else self.activation_bytes

    @property
    def optimizer_bytes_per_param(self) -> float:
        """Adam with fp32 master weights: 4 (master) + 4 (m) + 4 (v) = 12 (ZeRO paper, §3);
        8 with bf16 moments."""
        master = 4.0 if self.master_weights and self.params != "fp32" else 0.0
        moment_bytes = BYTES_PER_ELEMENT[self.optimizer_states]
        moments = 2 * moment_bytes if self.optimizer == "adam" else 0.0
        return master + moments
