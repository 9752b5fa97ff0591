"""Analytic FLOPs of one Exceiver training step, counted from the module's matmuls.

Only matrix products are counted (2 FLOPs per multiply-add); normalisation, activations,
softmax and gathers are ignored, as is customary. A training step costs three forward
passes (forward, and a backward that computes gradients for inputs and weights).
"""

from __future__ import annotations

#: Dense bf16 tensor-core peak (FLOP/s, without sparsity) of GPUs we may run on.
BF16_PEAK = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def forward_macs_per_cell(config: dict, n_tokens: float, n_queries: float) -> float:
    """Multiply-adds of one cell's forward pass.

    Parameters
    ----------
    config
        Module configuration (a resolved preset).
    n_tokens
        Encoder keys per cell (expressed genes, padding included when it is computed;
        the whole panel in dense mode), plus any null or batch token.
    n_queries
        Decoder queries per cell.
    """
    d, k, r = config["dim"], config["n_latents"], config["cross_mlp_ratio"]
    hidden = config["head_hidden"]
    tokens = 0.0
    if config["value_encoding"] == "additive":
        tokens += n_tokens * (d + d * d)
    encoder = (
        k * d * d  # query projection
        + 2 * n_tokens * d * d  # key and value projections
        + 2 * k * n_tokens * d  # scores and weighted values
        + k * d * d  # output projection
        + 2 * r * k * d * d  # MLP
    )
    layer = 4 * k * d * d + 2 * k * k * d + 2 * k * d * config["ff_dim"]
    decoder = (
        n_queries * d * d
        + 2 * k * d * d
        + 2 * n_queries * k * d
        + n_queries * d * d
        + 2 * r * n_queries * d * d
        + n_queries * (d * hidden + hidden)
    )
    return tokens + encoder + config["n_layers"] * layer + decoder


def train_flops_per_cell(config: dict, n_tokens: float, n_queries: float) -> float:
    """FLOPs of one cell in a training step (forward + backward = 3 forward passes)."""
    return 3 * 2 * forward_macs_per_cell(config, n_tokens, n_queries)


def peak_flops(device_name: str) -> float | None:
    """bf16 dense peak of a known GPU from its name, ``None`` otherwise."""
    for key, value in BF16_PEAK.items():
        if key in device_name:
            return value
    return None
