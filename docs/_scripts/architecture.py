"""Draw the Exceiver architecture of both presets from the real module (docs figure).

Every number and every optional part in the figure is read from an
:class:`~scexceiver.module.ExceiverModule` built with the preset's configuration, so the
figure changes when the code does. Run ``python docs/_scripts/architecture.py OUT.svg``
or let ``docs/conf.py`` call :func:`write_architecture_svg`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import nn

from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule

N_GENES = 19_067  # the released model's gene panel
COLOURS = {"data": "#e8eef7", "encoder": "#d9ead3", "latent": "#fff2cc", "decoder": "#f4cccc"}


def describe(preset: str) -> list[tuple[str, str, str]]:
    """(stage, text, colour key) of each box, read from a module built with ``preset``."""
    module = ExceiverModule(n_genes=N_GENES, n_batch=2, **resolve_preset(preset))
    net = module.network
    dim = net.gene_embedding.embedding_dim
    n_latents = net.latents.shape[0]
    enc = net.encoder_cross_attention
    dec = net.decoder_cross_attention
    layers = getattr(net.latent_transformer, "layers", [])
    # the parameter count of the released setting: no batch covariate
    plain = ExceiverModule(n_genes=N_GENES, n_batch=0, **resolve_preset(preset))
    n_params = sum(p.numel() for p in plain.parameters() if p.requires_grad)

    if module.token_mode == "dense":
        tokens = f"all {N_GENES:,} genes of the panel are tokens"
        if module.dense_mask == "additive":
            tokens += ";\nzero-count genes get +1 added to their attention logit"
    else:
        tokens = "only the cell's expressed genes are tokens\n(boolean key mask, padded per batch)"
    value = {
        "scale": "token = value x E[g]",
        "centred": "token = z-score x E[g]",
        "additive": "token = E[g] + MLP(value)",
        "identity": "token = E[g] (value ignored)",
    }[net.value_encoding]
    extra_tokens = []
    if net.null_token is not None:
        extra_tokens.append("a learned null token")
    if net.batch_injection == "encoder":
        extra_tokens.append("a batch token")
    token_norm = (
        "LayerNorm on tokens (keeps only the sign of the value)"
        if isinstance(enc.norm_context, nn.LayerNorm)
        else "no LayerNorm on tokens (the value's size survives)"
    )
    layer = layers[0] if len(layers) else None
    latent_text = (
        f"{len(layers)} {'pre' if layer.norm_first else 'post'}-norm transformer layers\n"
        f"{layer.self_attn.num_heads} heads, feed-forward {layer.linear1.out_features}, GELU"
        if layer is not None
        else "no transformer layers"
    )
    queries = ["E[g] of each queried gene"]
    if net.batch_injection == "decoder":
        queries.append("batch embedding")
    if net.library_encoder is not None:
        queries.append("Linear(log library size)")
    if net.query_type_embedding is not None:
        queries.append("query-type embedding")
    context = "attend to the latents"
    if net.batch_context is not None:
        context = "attend to the latents + MLP(latent, batch)"
    queried = "masked genes"
    if module.n_visible_queries or module.n_random_queries:
        queried += (
            f" + {module.n_visible_queries} visible expressed genes\n"
            f"+ {module.n_random_queries} panel genes drawn by {module.query_sampling}"
        )
    head = (
        f"LN -> Linear({dim},{net.head[1].out_features}) -> GELU -> "
        f"Linear({net.head[3].in_features},1)"
    )
    if net.output_bias is not None:
        head += "\n+ per-gene output bias (starts at the gene's mean)"
    if net.batch_output_bias is not None:
        head += "\n+ per-(batch, gene) bias (starts at the batch's shift)"
    readout = (
        f"cell embedding: latents flattened ({n_latents * dim} values)"
        if module.readout == "flatten"
        else f"cell embedding: mean of latents ({dim} values)"
    )
    z_score = "z-score per batch and gene" if module.batch_standardise else "z-score per gene"
    return [
        ("input", f"raw counts -> CP10k -> log1p -> {z_score}\n-> clip at 10 -> +1", "data"),
        (
            "gene tokens",
            f"{value}, E: gene table {N_GENES + 1:,} x {dim}\n{tokens}\n"
            f"{int(100 * module.mask_fraction)}% x median detected genes masked per cell"
            + (f"\n+ {' and '.join(extra_tokens)}" if extra_tokens else ""),
            "data",
        ),
        (
            "encoder cross-attention",
            f"{n_latents} learned latent queries x {dim}, {enc.attention.heads} heads\n"
            f"{token_norm}\nMLP LN -> Linear({dim},{enc.mlp[1].out_features}) -> GELU -> LN "
            f"-> Linear, residuals",
            "encoder",
        ),
        ("latent transformer", latent_text, "latent"),
        ("latents", f"{n_latents} x {dim}\n{readout}", "latent"),
        (
            "decoder cross-attention",
            f"queries: {' + '.join(queries[:2])}"
            + "".join(f"\n    + {q}" for q in queries[2:])
            + f"\n{context}, {dec.attention.heads} heads, "
            f"MLP {dec.mlp[1].out_features}",
            "decoder",
        ),
        (
            "output head",
            f"{head}\none value per queried gene; loss: MSE on\n{queried}",
            "decoder",
        ),
    ], f"{preset} preset\n{n_params:,} trainable parameters at {N_GENES:,} genes, no batches"


def draw(ax, preset: str) -> None:
    """Draw the boxes of ``preset`` top to bottom on ``ax``."""
    boxes, title = describe(preset)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, len(boxes))
    ax.axis("off")
    ax.set_title(title, fontsize=11, fontweight="bold")
    height = 0.78
    for i, (stage, text, colour) in enumerate(boxes):
        y = len(boxes) - i - 1 + (1 - height) / 2
        ax.add_patch(
            FancyBboxPatch(
                (0.02, y),
                0.96,
                height,
                boxstyle="round,pad=0.005,rounding_size=0.02",
                facecolor=COLOURS[colour],
                edgecolor="#555555",
            )
        )
        ax.text(0.04, y + height - 0.08, stage, fontsize=9.5, fontweight="bold", va="top")
        ax.text(0.04, y + height - 0.22, text, fontsize=8, va="top", linespacing=1.2)
        if i:
            ax.add_patch(
                FancyArrowPatch(
                    (0.5, y + height + (1 - height)),
                    (0.5, y + height),
                    arrowstyle="-|>",
                    mutation_scale=10,
                    color="#555555",
                )
            )


def write_architecture_svg(path: str | Path) -> Path:
    """Write the two-preset architecture figure to ``path`` (SVG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 11))
    for ax, preset in zip(axes, ("paper", "default"), strict=True):
        draw(ax, preset)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(write_architecture_svg(sys.argv[1] if len(sys.argv) > 1 else "architecture.svg"))
