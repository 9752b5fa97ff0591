"""The Exceiver network: gene tokens -> latents -> gene-query decoder (pure torch)."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from ._attention import CrossAttentionBlock
from ._conditioning import BatchConditioning


class Exceiver(nn.Module):
    """Perceiver IO over gene tokens, as in Connell, Khan & Keiser (2022).

    A cell is a set of gene tokens built from a shared gene embedding table and each
    gene's processed expression value. Learned latent queries cross-attend to the tokens,
    a stack of transformer layers refines the latents, and gene queries (rows of the same
    embedding table) cross-attend to the latents to predict one value per queried gene.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary. The embedding table has one extra row, index
        ``n_genes``, used as the mask / padding token (kept at zero).
    n_latents
        Number of latent queries ``K``.
    dim
        Width of gene embeddings and latents ``d``.
    n_layers
        Number of transformer layers over the latents ``L``.
    heads
        Attention heads in every attention layer.
    ff_dim
        Feed-forward width of the latent transformer layers.
    cross_mlp_ratio
        MLP width of the cross-attention blocks, as a multiple of ``dim``.
    head_hidden
        Hidden width of the output head (1 in the release).
    value_encoding
        ``"scale"``: token = value x embedding (the release). ``"centred"``: token =
        (value - 1) x embedding, the gene's z-score times its embedding: a gene
        detected at its mean level (its batch's mean with per-batch statistics) is a zero
        token, so the encoder reads how a cell departs from the mean rather than which
        genes its batch tends to detect. ``None``: ``"centred"`` with two or more batches,
        else ``"scale"``. ``"additive"``: token =
        embedding + MLP(value), which survives normalisation and lets attention depend on
        how much a gene is expressed. ``"identity"``: token = embedding, i.e. only which
        genes are detected (what the release's LayerNorm leaves of its tokens).
    norm_tokens
        LayerNorm the gene tokens before the encoder's attention (the release). Combined
        with ``value_encoding="scale"`` this keeps only the sign of each value.
    norm_first
        Pre-norm (``True``) or post-norm (``False``, the release) latent transformer layers.
    null_token
        Prepend a learned token every latent can attend to, so a cell with no expressed
        gene (or every gene masked) still has a well-defined encoding.
    n_batch
        Number of batches; 0 or 1 disables batch conditioning.
    batch_injection
        ``"decoder"``: a batch embedding is added to every decoder query (batch
        information need not live in the latents). ``"encoder"``: a batch token joins the
        encoder's keys/values (the authors' unmerged branch).
    gene_output_bias
        Add a learned bias per gene (and per query type) to the prediction, initialised by
        :meth:`init_output_bias` at the gene's mean.
    library_conditioning
        Add an encoding of the cell's standardised log library size to every decoder
        query, as scVI uses the observed library size: sequencing depth then need not be
        stored in the latents.
    n_query_types
        Number of learned decoder query types (0 disables). Used to tell the decoder
        whether a queried gene is known to be expressed (masked) or may be zero.
    embedding_std
        Standard deviation of the initial gene embeddings and latents; ``None`` keeps
        PyTorch's defaults (N(0, 1), as the release).
    batch_output_bias
        Add a learned bias per (query type, batch, gene) to the prediction, started by
        :meth:`init_batch_output_bias` at each batch's mean shift from the pooled gene
        mean: a gene's level in a batch is then given to the decoder, as scVI's decoder
        is given the batch for every gene, and need not be stored in the latents. Off
        with fewer than two batches.
    batch_context
        Let the decoder read latents conditioned on the batch
        (:class:`~scexceiver.module.BatchConditioning`): each latent is shifted by an
        MLP of the latent and the cell's batch, so the decoder can express batch effects
        that differ between cell states, as scVI's decoder reads its latent with the
        batch. Off with fewer than two batches.
    tie_gene_embeddings
        One gene table for the encoder's tokens and the decoder's queries (the release).
        ``False`` gives the encoder a table of its own: then the decoder's queries, the
        gene embeddings a model reports, are shaped by reconstruction alone, and a loss on
        the cell embedding (``neighbour_preservation``) reaches the encoder's table only.
        (:class:`~scexceiver.module.ExceiverModule` resolves ``None``.)
    """

    def __init__(
        self,
        n_genes: int,
        *,
        n_latents: int = 128,
        dim: int = 4,
        n_layers: int = 8,
        heads: int = 4,
        ff_dim: int = 2048,
        cross_mlp_ratio: int = 1,
        head_hidden: int = 1,
        value_encoding: Literal["scale", "centred", "additive", "identity"] | None = "scale",
        norm_tokens: bool = True,
        norm_first: bool = False,
        null_token: bool = False,
        n_batch: int = 0,
        batch_injection: Literal["decoder", "encoder"] = "decoder",
        gene_output_bias: bool = False,
        library_conditioning: bool = False,
        n_query_types: int = 0,
        embedding_std: float | None = None,
        batch_output_bias: bool = False,
        batch_context: bool = False,
        tie_gene_embeddings: bool = True,
    ) -> None:
        super().__init__()
        if value_encoding is None:
            value_encoding = "centred" if n_batch >= 2 else "scale"
        if value_encoding not in ("scale", "centred", "additive", "identity"):
            raise ValueError(
                "value_encoding must be 'scale', 'centred', 'additive' or 'identity', "
                f"got {value_encoding!r}."
            )
        if batch_injection not in ("decoder", "encoder"):
            raise ValueError(
                f"batch_injection must be 'decoder' or 'encoder', got {batch_injection!r}."
            )
        self.n_genes = n_genes
        self.n_batch = n_batch
        self.value_encoding = value_encoding
        self.batch_injection = batch_injection if n_batch > 1 else None

        self.gene_embedding = nn.Embedding(n_genes + 1, dim, padding_idx=n_genes)
        self.latents = nn.Parameter(torch.randn(n_latents, dim))
        if embedding_std is not None:
            nn.init.normal_(self.gene_embedding.weight, std=embedding_std)
            nn.init.normal_(self.latents, std=embedding_std)
            with torch.no_grad():
                self.gene_embedding.weight[n_genes].zero_()
        # registered only when untied, so tied models keep their state dict's keys
        self.encoder_gene_embedding = None
        if not tie_gene_embeddings:
            self.encoder_gene_embedding = copy.deepcopy(self.gene_embedding)
            if embedding_std is not None:  # a draw of its own
                nn.init.normal_(self.encoder_gene_embedding.weight, std=embedding_std)
                with torch.no_grad():
                    self.encoder_gene_embedding.weight[n_genes].zero_()
        self.value_encoder = (
            nn.Sequential(nn.Linear(1, dim), nn.GELU(), nn.Linear(dim, dim))
            if value_encoding == "additive"
            else None
        )
        if self.value_encoder is not None:
            # tokens start as pure gene identity; the value's contribution grows in training
            nn.init.zeros_(self.value_encoder[-1].weight)
            nn.init.zeros_(self.value_encoder[-1].bias)
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim)) if null_token else None
        self.batch_embedding = nn.Embedding(n_batch, dim) if self.batch_injection else None
        if self.batch_embedding is not None and embedding_std is not None:
            nn.init.normal_(self.batch_embedding.weight, std=embedding_std)

        self.encoder_cross_attention = CrossAttentionBlock(
            dim, dim, heads=heads, mlp_ratio=cross_mlp_ratio, norm_context=norm_tokens
        )
        self.latent_transformer = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    dim,
                    heads,
                    ff_dim,
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                    norm_first=norm_first,
                ),
                n_layers,
                enable_nested_tensor=False,
            )
            if n_layers > 0
            else nn.Identity()
        )
        self.decoder_cross_attention = CrossAttentionBlock(
            dim, dim, heads=heads, mlp_ratio=cross_mlp_ratio, norm_context=True
        )
        self.library_encoder = nn.Linear(1, dim) if library_conditioning else None
        if self.library_encoder is not None:
            nn.init.zeros_(self.library_encoder.weight)
            nn.init.zeros_(self.library_encoder.bias)
        self.query_type_embedding = nn.Embedding(n_query_types, dim) if n_query_types > 0 else None
        if self.query_type_embedding is not None:
            nn.init.zeros_(self.query_type_embedding.weight)
        self.head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, head_hidden),
            nn.GELU(),
            nn.Linear(head_hidden, 1),
        )
        self.output_bias = (
            nn.Parameter(torch.ones(max(n_query_types, 1), n_genes + 1))
            if gene_output_bias
            else None
        )
        self.batch_context = (
            BatchConditioning(dim, n_batch, dim * cross_mlp_ratio)
            if batch_context and n_batch > 1
            else None
        )
        self.batch_output_bias = (
            nn.Parameter(torch.zeros(max(n_query_types, 1), n_batch, n_genes + 1))
            if batch_output_bias and n_batch > 1
            else None
        )

    @torch.no_grad()
    def init_output_bias(self, expressed_means: torch.Tensor) -> None:
        """Start the output bias at each gene's mean processed value.

        Query type 0 ("known to be expressed") starts at the gene's mean over cells where
        it is detected; other types start at 1, the mean over all cells by construction
        of the processed values.
        """
        if self.output_bias is not None:
            self.output_bias.fill_(1.0)
            self.output_bias[0, : self.n_genes] = expressed_means

    @torch.no_grad()
    def init_batch_output_bias(self, offsets: torch.Tensor) -> None:
        """Start the per-batch output bias at ``offsets`` (query types, n_batch, n_genes).

        Query type ``t`` of the bias starts at row ``min(t, len(offsets) - 1)`` of
        ``offsets``; the padding entry stays 0.
        """
        if self.batch_output_bias is not None:
            rows = torch.arange(len(self.batch_output_bias)).clamp(max=len(offsets) - 1)
            self.batch_output_bias.zero_()
            self.batch_output_bias[..., : self.n_genes] = offsets[rows]

    def gene_tokens(self, gene_idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Build tokens (b, n, dim) from gene indices and processed values (b, n)."""
        table = self.encoder_gene_embedding
        embedding = (self.gene_embedding if table is None else table)(gene_idx)
        if self.value_encoding == "scale":
            return values.unsqueeze(-1) * embedding
        if self.value_encoding == "centred":
            # processed values are z-scores plus one
            return (values - 1.0).unsqueeze(-1) * embedding
        if self.value_encoding == "identity":
            return embedding
        return embedding + self.value_encoder(values.unsqueeze(-1))

    def encode(
        self,
        gene_idx: torch.Tensor,
        values: torch.Tensor,
        attn_mask: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode a minibatch of cells into latents.

        Parameters
        ----------
        gene_idx
            (b, n) gene indices of the tokens.
        values
            (b, n) processed expression values.
        attn_mask
            (b, n) boolean key mask (``True`` = token) or float additive logit bias.
        batch_index
            (b,) batch codes, used when ``batch_injection="encoder"``.
        return_weights
            Also return the encoder cross-attention weights (b, heads, K, n_keys).

        Returns
        -------
        tuple
            Latents (b, K, dim) and the attention weights or ``None``.
        """
        tokens = self.gene_tokens(gene_idx, values)
        extra = []
        if self.null_token is not None:
            extra.append(self.null_token.expand(tokens.shape[0], -1, -1))
        if self.batch_injection == "encoder":
            extra.append(self.batch_embedding(batch_index.view(-1)).unsqueeze(1))
        if extra:
            tokens = torch.cat([*extra, tokens], dim=1)
            always = attn_mask.new_ones if attn_mask.dtype == torch.bool else attn_mask.new_zeros
            attn_mask = torch.cat([always((tokens.shape[0], len(extra))), attn_mask], dim=1)
        latents = self.latents.expand(tokens.shape[0], -1, -1)
        latents, weights = self.encoder_cross_attention(
            latents, tokens, attn_mask=attn_mask, return_weights=return_weights
        )
        return self.latent_transformer(latents), weights

    def decode(
        self,
        latents: torch.Tensor,
        query_idx: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        query_type: torch.Tensor | None = None,
        library: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict processed values (b, m) of the queried genes (b, m) from latents (b, K, dim).

        ``library`` (b,) is the standardised log library size, used with
        ``library_conditioning``.
        """
        queries = self.gene_embedding(query_idx)
        if self.library_encoder is not None:
            queries = queries + self.library_encoder(library.view(-1, 1, 1).to(queries.dtype))
        if self.batch_injection == "decoder":
            queries = queries + self.batch_embedding(batch_index.view(-1)).unsqueeze(1)
        if self.query_type_embedding is not None and query_type is not None:
            queries = queries + self.query_type_embedding(query_type)
        if self.batch_context is not None and batch_index is not None:
            latents = self.batch_context(latents, batch_index)
        decoded, _ = self.decoder_cross_attention(queries, latents)
        prediction = self.head(decoded).squeeze(-1)
        row = query_type if query_type is not None else torch.zeros_like(query_idx)
        if self.output_bias is not None:
            prediction = (
                prediction + self.output_bias[row.clamp(max=len(self.output_bias) - 1), query_idx]
            )
        if self.batch_output_bias is not None and batch_index is not None:
            types = row.clamp(max=len(self.batch_output_bias) - 1)
            batch = batch_index.view(-1, 1).long().expand_as(query_idx)
            prediction = prediction + self.batch_output_bias[types, batch, query_idx]
        return prediction
