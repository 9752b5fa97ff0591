"""scvi-tools module: normalisation, masking and the masked-expression objective."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from scexceiver._constants import COUNTS, GENE_IDX, LIBRARY_SIZE, MEASURED_GENES, TOKEN_MASK

from ._adversary import BatchAdversary
from ._bottleneck import GaussianLatents
from ._exceiver import Exceiver
from ._masking import TokenDraw, draw_masked_tokens, lookup_counts
from ._neighbours import input_affinities, input_neighbours, neighbour_cross_entropy
from ._normalize import ExpressionNormalizer
from ._select import keep_top_genes

QUERY_EXPRESSED = 0
QUERY_ANY = 1
#: Presence queries (``n_presence_queries``): detected and undetected genes in balance.
QUERY_PRESENCE = 2
#: Depth augmentation (``input_thinning``) of the default preset with two or more batches.
_BATCH_INPUT_THINNING = 0.8
#: ``neighbour_preservation`` of the default preset with two or more batches.
_BATCH_NEIGHBOUR_PRESERVATION = 3.0
#: Neighbours per cell, and the softmax temperature, of ``neighbour_preservation``.
_NEIGHBOURS = 5
_NEIGHBOUR_TEMPERATURE = 0.1


def _neighbour_options(
    neighbour_preservation: float | None,
    tie_gene_embeddings: bool | None,
    n_batch: int,
    batch_standardise: bool,
) -> tuple[float, bool]:
    """``neighbour_preservation`` and ``tie_gene_embeddings`` with ``None`` resolved.

    The loss is on (3) with two or more batches each standardised by its own statistics,
    where its targets cross batches; the encoder's gene table is untied exactly when the
    loss is on.
    """
    if neighbour_preservation is None:
        on = batch_standardise and n_batch >= 2
        neighbour_preservation = _BATCH_NEIGHBOUR_PRESERVATION if on else 0.0
    if tie_gene_embeddings is None:
        tie_gene_embeddings = neighbour_preservation == 0
    return neighbour_preservation, tie_gene_embeddings


class ExceiverModule(BaseModuleClass):
    """Exceiver with its self-supervised objective, as an scvi-tools module.

    Inputs are sparse gene tokens of raw counts (see :mod:`scexceiver.data`). Per cell,
    ``n_mask`` expressed genes are hidden from the encoder and the decoder predicts their
    processed values (MSE). Optionally the decoder also reconstructs visible expressed
    genes and genes drawn uniformly from the panel (mostly zeros): whole-cell decoding,
    which forces the latents to describe the whole profile.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary.
    n_batch
        Number of batches (0 or 1 disables batch conditioning).
    token_mode
        ``"sparse"``: only expressed genes are tokens; masked genes are removed from the
        encoder's keys. ``"dense"``: every gene of the panel is a token (the release);
        masked genes become the mask token with value 1.
    dense_mask
        With dense tokens, how zero-count genes enter attention: ``"additive"`` adds +1
        to their attention logits (the release's float ``key_padding_mask``);
        ``"boolean"`` excludes them.
    mask_fraction
        ``n_mask = int(mask_fraction * median detected genes per training cell)``.
    n_visible_queries
        Visible expressed genes per cell the decoder also reconstructs (sparse mode).
    n_random_queries
        Genes per cell drawn from the panel that the decoder reconstructs, whatever their
        count (sparse mode).
    query_sampling
        How those genes are drawn: ``"uniform"`` over the panel, or ``"variance"``:
        proportional to ``p (1 - p)`` with ``p`` the gene's detection rate in training
        cells, so genes that are on in some cells and off in others (the informative
        ones) are queried most, and never-detected genes not at all.
    readout
        Cell embedding: ``"flatten"`` the latents (K x dim values, as the paper) or
        their ``"mean"`` (dim values).
    max_genes
        Encode at most this many expressed genes per cell, its highest counts (sparse
        mode; ``None``: all). Bounds the cost of deeply sequenced cells; the library size
        and the whole-cell decoding targets still use every gene.
    loss_space
        Units of the squared error. ``"standardised"``: per-gene z-scores, so every gene
        weighs the same however little it varies. ``"log"``: ``log1p(CP10k)`` units,
        i.e. each gene's error weighted by its variance (see :meth:`gene_loss_weights`),
        as PCA of unscaled log data weighs genes. Predictions are processed values
        either way.
    batch_adversary
        Weight of an adversarial batch classifier on the cell embedding (see
        :class:`~scexceiver.module.BatchAdversary`): the encoder learns to make the
        classifier's batch prediction uniform, with this weight, which pushes batch
        identity out of the embedding. ``0`` disables it; it needs ``n_batch >= 2``. The
        reported loss is the reconstruction error either way.
    latent_kl
        Weight of the KL divergence of Gaussian latents to a standard normal prior,
        per latent dimension (see :class:`~scexceiver.module.GaussianLatents`): the
        decoder reads sampled latents in training, so every dimension it uses has a
        price, and what the decoder is given anyway (batch, library size) tends to
        leave the embedding. ``0`` disables it (deterministic latents). The reported
        loss is the reconstruction error either way.
    batch_standardise
        Standardise the encoder's input values by each batch's own per-gene mean and
        std (fitted on that batch's training cells) instead of the pooled ones, the
        input-side counterpart of giving the decoder the batch: a gene shifted as a
        whole in one batch (a stimulation response, a chemistry's capture bias) enters
        the encoder at its usual level. Decoding targets and the loss keep the pooled
        statistics. With a single batch (data without a ``batch_key``) these are the
        pooled statistics in training, and a query model mapped onto the reference
        (:meth:`~scexceiver.ExceiverModel.load_query_data`) is standardised by its own.
        ``None``: on with two or more batches (the default preset).
    input_thinning
        Depth augmentation in training: each cell's encoder input is its counts
        binomially thinned to a fraction drawn uniformly from ``[1 - input_thinning, 1]``
        (its library size scaled alike), so genes of few counts drop out as they would in
        a shallower sequenced cell. The encoder learns an embedding that depends less on
        depth and on which genes a technology detects; decoding targets keep every count.
        ``0`` disables it; validation and embedding never thin. ``None``: ``0.8`` with
        two or more batches, else ``0`` (the default preset; measured to help where
        batches differ in depth or technology).
    n_presence_queries
        Presence queries per cell, in a query type of their own: half of them (a random
        subset of the visible expressed genes the decoder reconstructs) are genes the
        cell detects, half genes it does not, drawn in proportion to their detection
        rate in training cells, so a gene is asked about where it is off roughly as
        often as where it is on, and the latents must say whether it is on. Without
        them, only the panel draws ask that (the other queries are typed as detected),
        and they reach a gene in proportion to ``p (1 - p)`` of its detection rate
        ``p``: a gene detected in few cells (a rare population's marker) is almost never
        asked for in the cells that express it, and the embedding need not keep it.
        Their own type keeps the panel genes' prediction (``sample``,
        :meth:`~scexceiver.ExceiverModel.predict_expression`) calibrated. Must be even
        and at most ``2 * n_visible_queries``; the network gets a third query type.
        ``0`` disables them.
    cycle_consistency
        Weight of a cycle-consistency loss in training (after Hrovatin et al.'s sysVI):
        the decoder predicts each cell's encoded genes as if the cell had been measured
        in another batch (drawn uniformly from the others), the encoder reads that
        translation as the other batch's input, and the loss adds this weight times
        the squared distance between the two embeddings, divided by the minibatch's
        spread of embeddings. An embedding that must not move when the cell is moved to
        another batch keeps less of the batch. It needs ``n_batch >= 2`` and sparse
        tokens; ``0`` disables it. The reported loss is the reconstruction error either
        way, and the distance is logged as ``cycle_gap``.
    neighbour_preservation
        Weight of a loss in training that keeps each cell's nearest neighbours in its
        input near it in the embedding. Per minibatch, a cell's 5 neighbours are the
        cells of highest cosine similarity of their expression over the whole panel
        (:meth:`standardised_input`),
        standardised as the encoder's input (per batch with ``batch_standardise``,
        undetected genes included, unmeasured ones at 0), from the uncorrupted counts.
        The loss is the cross-entropy of those neighbours under a softmax (temperature
        0.1) over the cosine similarities of the cells' embeddings. The input's
        neighbours are fixed, so the loss cannot merge populations the input tells
        apart; with per-batch standardisation they cross batches, so the embedding
        keeps less of the batch. :meth:`~scexceiver.ExceiverModel.train` makes the
        minibatches of neighbourhoods in the whole training set, so each cell's nearest
        cells are in its minibatch. ``0`` disables it. The reported loss is the
        reconstruction error either way, and the cross-entropy is logged as
        ``neighbour_loss``. ``None``: ``3`` with two or more batches standardised each
        by its own statistics (``batch_standardise``), else ``0`` (the default preset;
        measured on three datasets with batches).
    neighbour_perplexity
        Soft targets for ``neighbour_preservation``: instead of its 5 nearest cells, each
        cell's target is a softmax over the minibatch's other cells of a cell-specific
        multiple of their input cosine similarity, set so that the distribution's
        perplexity (effective number of neighbours) is this value, as t-SNE's input
        affinities (van der Maaten & Hinton 2008). The target then keeps
        how much more similar one cell is than another, not only which cells are
        nearest. ``None``: the 5 nearest cells, equally weighted.
    **network_kwargs
        Passed to :class:`~scexceiver.module.Exceiver`. Its ``tie_gene_embeddings=None``
        (the default preset) unties the encoder's gene table exactly when
        ``neighbour_preservation`` is on, so the loss does not reshape the decoder's
        gene queries.
    """

    def __init__(
        self,
        n_genes: int,
        n_batch: int = 0,
        *,
        token_mode: Literal["sparse", "dense"] = "sparse",
        dense_mask: Literal["additive", "boolean"] = "additive",
        mask_fraction: float = 0.15,
        n_visible_queries: int = 0,
        n_random_queries: int = 0,
        query_sampling: Literal["uniform", "variance"] = "uniform",
        readout: Literal["flatten", "mean"] = "flatten",
        max_genes: int | None = None,
        loss_space: Literal["standardised", "log"] = "standardised",
        batch_adversary: float = 0.0,
        latent_kl: float = 0.0,
        batch_standardise: bool | None = False,
        input_thinning: float | None = 0.0,
        n_presence_queries: int = 0,
        cycle_consistency: float = 0.0,
        neighbour_preservation: float | None = 0.0,
        neighbour_perplexity: float | None = None,
        **network_kwargs,
    ) -> None:
        super().__init__()
        if token_mode not in ("sparse", "dense"):
            raise ValueError(f"token_mode must be 'sparse' or 'dense', got {token_mode!r}.")
        if dense_mask not in ("additive", "boolean"):
            raise ValueError(f"dense_mask must be 'additive' or 'boolean', got {dense_mask!r}.")
        if query_sampling not in ("uniform", "variance"):
            raise ValueError(
                f"query_sampling must be 'uniform' or 'variance', got {query_sampling!r}."
            )
        if readout not in ("flatten", "mean"):
            raise ValueError(f"readout must be 'flatten' or 'mean', got {readout!r}.")
        if loss_space not in ("standardised", "log"):
            raise ValueError(f"loss_space must be 'standardised' or 'log', got {loss_space!r}.")
        if token_mode == "dense" and (n_visible_queries or n_random_queries):
            raise ValueError("Whole-cell decoding queries need token_mode='sparse'.")
        if input_thinning is None:
            input_thinning = _BATCH_INPUT_THINNING if n_batch >= 2 else 0.0
        if token_mode == "dense" and input_thinning:
            raise ValueError("input_thinning needs token_mode='sparse'.")
        if max_genes is not None and (token_mode == "dense" or max_genes < 1):
            raise ValueError(
                f"max_genes={max_genes} needs token_mode='sparse' and a positive value; "
                "use max_genes=None to encode every expressed gene."
            )
        self.n_genes = n_genes
        self.token_mode = token_mode
        self.dense_mask = dense_mask
        self.mask_fraction = mask_fraction
        self.n_visible_queries = n_visible_queries
        self.n_random_queries = n_random_queries
        self.query_sampling = query_sampling
        self.readout = readout
        self.max_genes = max_genes
        self.loss_space = loss_space
        if batch_adversary < 0:
            raise ValueError(f"batch_adversary must be >= 0, got {batch_adversary}.")
        if batch_adversary > 0 and n_batch < 2:
            raise ValueError(
                f"batch_adversary={batch_adversary} needs at least two batches, got "
                f"{n_batch}: set up the AnnData with a batch_key of two or more batches, "
                "or leave batch_adversary=0."
            )
        if not 0 <= input_thinning < 1:
            raise ValueError(
                f"input_thinning must be in [0, 1) (the largest fraction of counts removed), "
                f"got {input_thinning}."
            )
        self.input_thinning = input_thinning
        if cycle_consistency < 0:
            raise ValueError(f"cycle_consistency must be >= 0, got {cycle_consistency}.")
        if cycle_consistency > 0 and (n_batch < 2 or token_mode != "sparse"):
            raise ValueError(
                f"cycle_consistency={cycle_consistency} needs at least two batches and "
                f"token_mode='sparse', got {n_batch} batches and {token_mode!r}: set up the "
                "AnnData with a batch_key of two or more batches, or leave "
                "cycle_consistency=0."
            )
        self.cycle_consistency = cycle_consistency
        if batch_standardise is None:
            batch_standardise = n_batch >= 2
        neighbour_preservation, tie = _neighbour_options(
            neighbour_preservation,
            network_kwargs.get("tie_gene_embeddings", True),
            n_batch,
            batch_standardise,
        )
        network_kwargs["tie_gene_embeddings"] = tie
        if neighbour_preservation < 0:
            raise ValueError(f"neighbour_preservation must be >= 0, got {neighbour_preservation}.")
        if neighbour_perplexity is not None and not neighbour_perplexity > 1:
            raise ValueError(
                f"neighbour_perplexity must be above 1 (effective neighbours per cell), got "
                f"{neighbour_perplexity}; pass None for each cell's 5 nearest cells."
            )
        self.neighbour_preservation = neighbour_preservation
        self.neighbour_perplexity = neighbour_perplexity
        if (
            n_presence_queries < 0
            or n_presence_queries % 2
            or n_presence_queries > 2 * n_visible_queries
        ):
            raise ValueError(
                f"n_presence_queries must be an even number between 0 and twice "
                f"n_visible_queries ({2 * n_visible_queries}), got {n_presence_queries}."
            )
        self.n_presence_queries = n_presence_queries
        if n_presence_queries:
            network_kwargs["n_query_types"] = max(
                network_kwargs.get("n_query_types", 0), QUERY_PRESENCE + 1
            )
        if latent_kl < 0:
            raise ValueError(f"latent_kl must be >= 0, got {latent_kl}.")
        self.batch_standardise = batch_standardise and n_batch >= 1
        self.network = Exceiver(n_genes, n_batch=n_batch, **network_kwargs)
        n_latents, dim = self.network.latents.shape
        self.latent_kl = latent_kl
        self.bottleneck = GaussianLatents(dim) if latent_kl > 0 else None
        self.adversary = (
            BatchAdversary(
                n_latents * dim if readout == "flatten" else dim, n_batch, batch_adversary
            )
            if batch_adversary > 0
            else None
        )
        self.normalizer = ExpressionNormalizer(
            n_genes, n_batch=n_batch if self.batch_standardise else 0
        )
        self.register_buffer("n_mask", torch.tensor(0))
        self.register_buffer("gene_expressed_mean", torch.ones(n_genes + 1))
        self.register_buffer("query_weights", torch.ones(n_genes))
        if n_presence_queries:
            self.register_buffer("detection_rate", torch.ones(n_genes))

    @property
    def needs_batch_statistics(self) -> bool:
        """Whether :meth:`fit_statistics` needs the statistics of each batch."""
        return self.batch_standardise or self.network.batch_output_bias is not None

    @property
    def is_fitted(self) -> bool:
        """Whether gene statistics (and ``n_mask``) have been fitted on training cells."""
        return bool(self.normalizer.fitted)

    @torch.no_grad()
    def fit_statistics(self, stats, batch_stats=None) -> None:
        """Store gene statistics, set ``n_mask`` and start the output bias at gene means.

        Parameters
        ----------
        stats
            Statistics of the training cells with the attributes of
            :class:`scexceiver.data.GeneStatistics`: per-gene ``mean`` and ``std`` of
            ``log1p(CP10k)``, ``expressed_mean`` (mean processed value where detected),
            ``detection_rate``, and per-cell ``median_detected``, ``log_library_mean``
            and ``log_library_std``.
        batch_stats
            With ``batch_standardise`` or ``batch_output_bias``, the same statistics of
            each batch's training cells, one per batch code in order.
        """
        if self.needs_batch_statistics and (
            batch_stats is None or len(batch_stats) != self.network.n_batch
        ):
            raise ValueError(
                "batch_standardise and batch_output_bias need the statistics of "
                "every batch's training cells (batch_stats, one per batch)."
            )
        if self.batch_standardise:
            self.normalizer.set_batch_statistics(*batch_standardisation(stats, batch_stats))
        if self.network.batch_output_bias is not None:
            self.network.init_batch_output_bias(batch_level_shifts(stats, batch_stats))
        self.normalizer.set_statistics(
            torch.as_tensor(stats.mean),
            torch.as_tensor(stats.std),
            stats.log_library_mean,
            stats.log_library_std,
        )
        self.n_mask.fill_(int(self.mask_fraction * stats.median_detected))
        expressed_mean = torch.as_tensor(stats.expressed_mean, dtype=torch.float32)
        self.gene_expressed_mean[: self.n_genes] = expressed_mean
        self.network.init_output_bias(expressed_mean)
        p = torch.as_tensor(stats.detection_rate, dtype=torch.float32)
        if self.n_presence_queries:
            self.detection_rate.copy_(p)
        if self.query_sampling == "variance":
            weights = p * (1 - p)
            self.query_weights.copy_(weights if weights.sum() > 0 else torch.ones_like(p))

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "gene_idx": tensors[GENE_IDX],
            "counts": tensors[COUNTS],
            "token_mask": tensors[TOKEN_MASK],
            "library_size": tensors[LIBRARY_SIZE],
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
            "measured_genes": tensors.get(MEASURED_GENES),
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "latents": inference_outputs["latent_sample"],
            "query_idx": inference_outputs["query_idx"],
            "query_type": inference_outputs["query_type"],
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
            "library": inference_outputs["library"],
        }

    def _densify(
        self, gene_idx: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = counts.shape[0]
        dense = counts.new_zeros(b, self.n_genes + 1).scatter_(1, gene_idx, counts)
        idx = torch.arange(self.n_genes, device=counts.device).expand(b, -1)
        return idx, dense[:, : self.n_genes]

    @auto_move_data
    def inference(
        self,
        gene_idx: torch.Tensor,
        counts: torch.Tensor,
        token_mask: torch.Tensor,
        library_size: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        measured_genes: torch.Tensor | None = None,
        masking: bool = True,
        generator: torch.Generator | None = None,
        return_weights: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        """Normalise, optionally mask, and encode a minibatch of tokenised cells.

        Parameters
        ----------
        gene_idx, counts, token_mask
            (b, n) padded sparse tokens, gene indices sorted per cell.
        library_size
            (b,) total counts per cell.
        batch_index
            (b, 1) batch codes.
        measured_genes
            (b, n_genes) boolean, the genes each cell's source measured (corpora of
            files with different gene panels); an unmeasured gene is never a decoding
            target. ``None``: every gene was measured.
        masking
            Draw masked genes and decoder queries (training and validation); ``False``
            encodes every token (embedding).
        generator
            Random generator for the draw (a fixed one gives a fixed validation mask).
        return_weights
            Also return the encoder cross-attention weights.

        Returns
        -------
        dict
            ``latents`` (b, K, dim), ``latent_sample`` (what the decoder reads: a sample
            of Gaussian latents in training with ``latent_kl``, else ``latents``) and
            ``latent_kl`` (b,) (``None`` without it), ``weights``, the encoder's token
            ``gene_idx`` and ``attn_mask``, the standardised log ``library`` size, and
            with masking the decoder ``query_idx``, ``query_type``, ``target``,
            ``query_valid`` and ``query_masked`` (b, m).
        """
        all_tokens = (gene_idx, counts)
        if self.max_genes is not None:
            gene_idx, counts, token_mask = keep_top_genes(
                gene_idx, counts, token_mask, self.max_genes
            )
        if self.token_mode == "dense":
            gene_idx, counts = self._densify(gene_idx, counts)
            expressed = counts > 0
        else:
            expressed = token_mask
        values = self.normalizer(counts, library_size, gene_idx)
        enc_counts, enc_library, enc_keep = counts, library_size, expressed
        thinning = masking and self.training and self.input_thinning > 0
        if thinning:
            enc_counts, enc_library = thin_counts(
                counts, library_size, self.input_thinning, generator
            )
            enc_keep = expressed & (enc_counts > 0)
        enc_values = values
        if self.batch_standardise or thinning:
            enc_values = self.normalizer(
                enc_counts, enc_library, gene_idx, batch_index if self.batch_standardise else None
            )
        enc_idx = gene_idx
        out: dict[str, torch.Tensor | None] = {
            "query_idx": None,
            "query_type": None,
            "target": None,
            "query_valid": None,
            "query_masked": None,
            "cycle_gap": None,
            "neighbour_loss": None,
        }
        if masking:
            draw = draw_masked_tokens(
                expressed, int(self.n_mask), self.n_visible_queries, generator
            )
            pos, valid = draw.masked_pos, draw.masked_valid
            if self.token_mode == "dense":
                enc_idx = _scatter_where(enc_idx, pos, valid, self.n_genes)
                enc_values = _scatter_where(enc_values, pos, valid, 1.0)
            else:
                enc_keep = _scatter_where(enc_keep, pos, valid, False)
            out.update(
                self._decoder_queries(
                    gene_idx, values, all_tokens, library_size, draw, generator, measured_genes
                )
            )
        if self.token_mode == "dense" and self.dense_mask == "additive":
            attn_mask = (~expressed).to(values.dtype)
        else:
            attn_mask = enc_keep
        latents, weights = self.network.encode(
            enc_idx, enc_values, attn_mask, batch_index, return_weights=return_weights
        )
        if masking and self.training and self.cycle_consistency > 0:
            out["cycle_gap"] = self._cycle_gap(
                latents, enc_idx, attn_mask, batch_index, library_size, generator
            )
        if masking and self.training and self.neighbour_preservation > 0:
            standardised = self._standardised_panel(
                *all_tokens, library_size, batch_index, measured_genes
            )
            if self.neighbour_perplexity is None:
                target = input_neighbours(standardised, _NEIGHBOURS)
            else:
                target = input_affinities(standardised, self.neighbour_perplexity)
            out["neighbour_loss"] = neighbour_cross_entropy(
                self.embed(latents), target, _NEIGHBOUR_TEMPERATURE
            )
        sample, kl = latents, None
        if self.bottleneck is not None:
            sample, kl = self.bottleneck(latents, generator)
        out.update(
            latents=latents,
            latent_sample=sample,
            latent_kl=kl,
            weights=weights,
            gene_idx=enc_idx,
            attn_mask=attn_mask,
            library=self.normalizer.library(library_size),
        )
        return out

    def standardised_input(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each cell's whole panel (b, n_genes), standardised as the encoder reads it.

        The same z-scores that ``neighbour_preservation`` compares cells by: per batch
        with ``batch_standardise``, undetected genes at their z-score of zero counts,
        genes the cell's source did not measure at 0.
        """
        inputs = self._get_inference_input(tensors)
        return self._standardised_panel(
            inputs["gene_idx"],
            inputs["counts"],
            inputs["library_size"],
            inputs["batch_index"],
            inputs["measured_genes"],
        )

    @torch.no_grad()
    def _standardised_panel(
        self,
        gene_idx: torch.Tensor,
        counts: torch.Tensor,
        library_size: torch.Tensor,
        batch_index: torch.Tensor | None,
        measured_genes: torch.Tensor | None,
    ) -> torch.Tensor:
        """Z-scores (b, n_genes) of each cell's whole panel, as the encoder standardises.

        Undetected genes get their z-score of zero counts; genes a cell's source did not
        measure get 0.
        """
        panel, dense = self._densify(gene_idx, counts)
        z = self.normalizer(
            dense, library_size, panel, batch_index if self.batch_standardise else None
        )
        z = z - 1.0
        return z if measured_genes is None else z * measured_genes

    def _cycle_gap(
        self,
        latents: torch.Tensor,
        gene_idx: torch.Tensor,
        keep: torch.Tensor,
        batch_index: torch.Tensor,
        library_size: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Relative distance between the cells' embeddings and their translations'.

        Each cell's encoded genes ``gene_idx`` (b, n) where ``keep`` are decoded as if
        the cell were from another batch, standardised as that batch's input and
        encoded again (see ``cycle_consistency``).
        """
        n_batch = self.network.n_batch
        shift = torch.randint(
            1, n_batch, batch_index.shape, generator=generator, device=gene_idx.device
        )
        other = (batch_index.long() + shift) % n_batch
        query_type = torch.full_like(gene_idx, QUERY_EXPRESSED)
        predicted = self.network.decode(
            latents, gene_idx, other, query_type, self.normalizer.library(library_size)
        )
        values = self.normalizer.standardise(
            self.normalizer.log_values(predicted, gene_idx),
            gene_idx,
            other if self.batch_standardise else None,
        )
        translated, _ = self.network.encode(gene_idx, values, keep, other)
        return relative_gap(self.embed(latents), self.embed(translated))

    def _decoder_queries(
        self,
        gene_idx: torch.Tensor,
        values: torch.Tensor,
        all_tokens: tuple[torch.Tensor, torch.Tensor],
        library_size: torch.Tensor,
        draw: TokenDraw,
        generator: torch.Generator | None,
        measured_genes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        idx = [gene_idx.gather(1, draw.masked_pos), gene_idx.gather(1, draw.visible_pos)]
        target = [values.gather(1, draw.masked_pos), values.gather(1, draw.visible_pos)]
        valid = [draw.masked_valid, draw.visible_valid]
        qtype = [torch.full_like(i, QUERY_EXPRESSED) for i in idx]
        measured = None if measured_genes is None else measured_genes.bool()
        if self.n_random_queries:
            rand, rand_valid = _draw_genes(
                self.query_weights, self.n_random_queries, gene_idx.shape[0], generator, measured
            )
            idx.append(rand)
            target.append(self.normalizer(lookup_counts(*all_tokens, rand), library_size, rand))
            valid.append(rand_valid)
            qtype.append(torch.full_like(rand, QUERY_ANY))
        if self.n_presence_queries:  # detected genes, and as many undetected ones
            half = slice(0, self.n_presence_queries // 2)
            absent, absent_valid = self._draw_undetected_genes(all_tokens, measured, generator)
            absent_target = self.normalizer(
                lookup_counts(*all_tokens, absent), library_size, absent
            )
            idx += [idx[1][:, half], absent]
            target += [target[1][:, half], absent_target]
            valid += [valid[1][:, half], absent_valid]
            qtype += [torch.full_like(absent, QUERY_PRESENCE)] * 2
        masked = torch.zeros_like(torch.cat(valid, dim=1))
        masked[:, : draw.masked_pos.shape[1]] = draw.masked_valid
        return {
            "query_idx": torch.cat(idx, dim=1),
            "query_type": torch.cat(qtype, dim=1),
            "target": torch.cat(target, dim=1),
            "query_valid": torch.cat(valid, dim=1),
            "query_masked": masked,
        }

    def _draw_undetected_genes(
        self,
        all_tokens: tuple[torch.Tensor, torch.Tensor],
        measured: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n_presence_queries // 2`` genes per cell that it does not detect.

        Each measured, undetected gene is drawn in proportion to its detection rate in
        training cells, so a gene is asked about where it is off about as often as where
        it is on.
        """
        tokens, counts = all_tokens
        b = tokens.shape[0]
        detected = torch.zeros(b, self.n_genes + 1, dtype=torch.bool, device=tokens.device)
        eligible = ~detected.scatter_(1, tokens, counts > 0)[:, : self.n_genes]
        if measured is not None:
            eligible = eligible & measured
        return _draw_genes(
            self.detection_rate, self.n_presence_queries // 2, b, generator, eligible
        )

    @auto_move_data
    def generative(
        self,
        latents: torch.Tensor,
        query_idx: torch.Tensor | None,
        query_type: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
        library: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Decode processed values of the queried genes from the latents."""
        if query_idx is None:
            return {"prediction": None}
        prediction = self.network.decode(latents, query_idx, batch_index, query_type, library)
        return {"prediction": prediction}

    def loss(self, tensors: dict, inference_outputs: dict, generative_outputs: dict) -> LossOutput:
        """Mean squared error of the predicted processed values over all valid queries.

        With ``loss_space="log"`` each query's error is weighted by its gene's weight (see
        :meth:`gene_loss_weights`); ``masked_mse`` is always the unweighted error on
        processed values of the masked genes. With a batch adversary the loss's gradient
        also carries the adversary's two losses, and with ``latent_kl`` the weighted KL
        divergence, with ``cycle_consistency`` the weighted cycle gap and with
        ``neighbour_preservation`` the weighted neighbour loss, but its value
        stays the reconstruction error (comparable across models and epochs, and what
        early stopping watches). The classifier's cross-entropy is reported as
        ``batch_adversary_ce``, the KL divergence per latent dimension as ``latent_kl``,
        the cycle gap as ``cycle_gap`` and the neighbour loss as ``neighbour_loss``.
        """
        valid = inference_outputs["query_valid"].float()
        masked = inference_outputs["query_masked"].float()
        sq_err = (generative_outputs["prediction"].float() - inference_outputs["target"]) ** 2
        masked_mse = (sq_err * masked).sum() / masked.sum().clamp(min=1)
        if self.loss_space == "log":
            sq_err = sq_err * self.gene_loss_weights()[inference_outputs["query_idx"]]
        per_cell = (sq_err * valid).sum(1) / valid.sum(1).clamp(min=1)
        loss = (sq_err * valid).sum() / valid.sum().clamp(min=1)
        metrics = {"masked_mse": masked_mse.detach(), "n_masked": masked.sum().detach()}
        if self.adversary is not None:
            batch_ce, confusion = self.adversary(
                self.embed(inference_outputs["latents"]), tensors[REGISTRY_KEYS.BATCH_KEY]
            )
            adversarial = batch_ce + confusion
            loss = loss + (adversarial - adversarial.detach())
            metrics["batch_adversary_ce"] = batch_ce.detach()
        if inference_outputs.get("cycle_gap") is not None:
            gap = inference_outputs["cycle_gap"]
            loss = loss + self.cycle_consistency * (gap - gap.detach())
            metrics["cycle_gap"] = gap.detach()
        if inference_outputs.get("neighbour_loss") is not None:
            neighbour = inference_outputs["neighbour_loss"]
            loss = loss + self.neighbour_preservation * (neighbour - neighbour.detach())
            metrics["neighbour_loss"] = neighbour.detach()
        if self.bottleneck is not None:
            kl = inference_outputs["latent_kl"].mean()
            loss = loss + self.latent_kl * (kl - kl.detach())
            metrics["latent_kl"] = kl.detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            n_obs_minibatch=valid.shape[0],
            extra_metrics=metrics,
        )

    def gene_loss_weights(self) -> torch.Tensor:
        """Per-gene weights (n_genes + 1,) of the ``"log"`` loss.

        Each gene's stored variance of ``log1p(CP10k)`` over training cells divided by
        its mean over the panel, so the weights average 1 over the panel's genes. A
        gene never detected in training stores variance 1
        (its standard deviation 0 is stored as 1); its target is constant and
        ``query_sampling="variance"`` never queries it. The padding entry weighs 0.
        """
        variance = self.normalizer.std.float().square()
        variance = variance / variance[: self.n_genes].mean().clamp(min=1e-12)
        variance[self.n_genes] = 0.0
        return variance

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """Cell embedding from latents (b, K, dim) with the configured readout."""
        return latents.flatten(1) if self.readout == "flatten" else latents.mean(1)

    @torch.inference_mode()
    def encoder_attention(self, tensors: dict) -> dict[str, torch.Tensor]:
        """Encoder cross-attention of unmasked cells, averaged over heads and latents.

        The weights every latent puts on each of the cell's expressed genes, averaged
        over heads and latents; tokens that are not genes of the cell (the null token,
        an encoder batch token, and in dense mode the zero-count genes) are dropped and
        each cell's weights renormalised to sum to 1 over its expressed genes. Used for
        interpretation only: the weights are materialised, the training path is untouched.

        Parameters
        ----------
        tensors
            A tokenised minibatch (see :func:`~scexceiver.data.collate_tokens`).

        Returns
        -------
        dict
            ``gene_idx`` (b, n) gene of each weight, ``weights`` (b, n) importance (0 off
            the expressed genes), ``expressed`` (b, n) bool mask of the cell's expressed
            genes.
        """
        inputs = self._get_inference_input(tensors)
        outputs = self.inference(**inputs, masking=False, return_weights=True)
        gene_idx = outputs["gene_idx"]
        weights = outputs["weights"].float().mean(dim=(1, 2))
        weights = weights[:, weights.shape[1] - gene_idx.shape[1] :]
        if self.token_mode == "dense":
            tokens = inputs["gene_idx"].to(gene_idx.device)
            present = inputs["token_mask"].to(gene_idx.device)
            expressed = torch.zeros(
                gene_idx.shape[0], self.n_genes + 1, dtype=torch.bool, device=gene_idx.device
            ).scatter_(1, tokens, present)[:, : self.n_genes]
        else:
            expressed = outputs["attn_mask"]
        weights = weights * expressed
        weights = weights / weights.sum(1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
        return {"gene_idx": gene_idx, "weights": weights, "expressed": expressed}

    @torch.inference_mode()
    def sample(self, tensors: dict, query_idx: torch.Tensor) -> torch.Tensor:
        """Predict processed values of genes ``query_idx`` (m,) for every cell, unmasked.

        Genes are queried as "may be zero", i.e. the whole-cell reconstruction.
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors), masking=False)
        latents = inference_outputs["latents"]
        query = query_idx.to(latents.device).expand(latents.shape[0], -1)
        qtype = torch.full_like(query, QUERY_ANY)
        batch_index = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return self.network.decode(
            latents, query, batch_index, qtype, inference_outputs["library"]
        )


def _draw_genes(
    weights: torch.Tensor,
    n: int,
    b: int,
    generator: torch.Generator | None,
    eligible: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` genes for each of ``b`` cells, with replacement, by ``weights`` (n_genes,).

    With ``eligible`` (b, n_genes), each cell draws among its eligible genes only. Returns
    the (b, n) genes and which of them are valid targets: a cell with no eligible gene of
    positive weight draws filler, all invalid.
    """
    if eligible is None:
        genes = torch.multinomial(weights, b * n, replacement=True, generator=generator)
        genes = genes.view(b, -1)
        return genes, torch.ones_like(genes, dtype=torch.bool)
    weights = weights * eligible
    empty = weights.sum(1, keepdim=True) == 0
    genes = torch.multinomial(
        torch.where(empty, torch.ones_like(weights), weights),
        n,
        replacement=True,
        generator=generator,
    )
    return genes, eligible.gather(1, genes) & ~empty


def relative_gap(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between paired embeddings (b, d), over their spread.

    The spread is each set's mean squared distance to its own mean, summed over the two
    sets: ``0`` when every pair coincides, about ``2`` for pairs drawn independently.
    """
    spread = sum((e - e.mean(0)).square().sum(1).mean() for e in (first, second))
    return 2 * (first - second).square().sum(1).mean() / spread.clamp(min=1e-8)


def thin_counts(
    counts: torch.Tensor,
    library_size: torch.Tensor,
    max_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binomially thin each cell's counts to a random fraction of its depth.

    Parameters
    ----------
    counts
        (b, n) counts of a minibatch's tokens.
    library_size
        (b,) total counts per cell.
    max_fraction
        Each cell keeps a fraction ``r ~ U(1 - max_fraction, 1)`` of its depth: every
        count survives with probability ``r``.
    generator
        Random generator for ``r`` and the draws.

    Returns
    -------
    tuple of torch.Tensor
        The thinned counts (b, n) and the library sizes scaled by ``r`` (b,).
    """
    rate = torch.rand(counts.shape[0], 1, generator=generator, device=counts.device)
    rate = 1 - max_fraction * rate
    thinned = torch.binomial(
        counts.float(), rate.expand(counts.shape).contiguous(), generator=generator
    )
    return thinned.to(counts.dtype), library_size * rate.squeeze(1)


def batch_standardisation(
    stats, batch_stats, prior_cells: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each batch's per-gene mean and std of ``log1p(CP10k)``, shrunk toward the pooled ones.

    A batch of a dozen cells measures a gene's mean and variance poorly (a gene seen in
    one of its cells gets a tiny std, and that cell a huge z-score), so each batch's mean
    and variance are weighted averages with the pooled ones: the batch's by
    ``n / (n + prior_cells)`` for its ``n`` cells. Batches of thousands of cells keep
    their own statistics.

    Parameters
    ----------
    stats
        Pooled :class:`scexceiver.data.GeneStatistics` of the training cells.
    batch_stats
        The same statistics of each batch's cells, one per batch code.
    prior_cells
        Cells' worth of evidence for the pooled statistics; ``0`` gives each batch's own.

    Returns
    -------
    tuple of torch.Tensor
        Mean and std, each (n_batch, n_genes).
    """
    mean = torch.as_tensor(stats.mean, dtype=torch.float32)
    var = torch.as_tensor(stats.std, dtype=torch.float32).square()
    b_mean = torch.stack([torch.as_tensor(s.mean, dtype=torch.float32) for s in batch_stats])
    b_var = torch.stack([torch.as_tensor(s.std, dtype=torch.float32) for s in batch_stats])
    b_var = b_var.square()
    n = torch.tensor([float(s.n_cells) for s in batch_stats]).unsqueeze(1)
    weight = n / (n + prior_cells)
    shrunk_var = weight * b_var + (1 - weight) * var
    return weight * b_mean + (1 - weight) * mean, shrunk_var.sqrt()


def batch_level_shifts(stats, batch_stats, prior_cells: float = 10.0) -> torch.Tensor:
    """Each batch's mean gene level minus the pooled one, in processed units.

    A shift seen in few cells is mostly noise, so each is shrunk toward 0 by
    ``n / (n + prior_cells)``, with ``n`` the cells it is measured on (the batch's cells,
    or those where it detects the gene).

    Parameters
    ----------
    stats
        Pooled :class:`scexceiver.data.GeneStatistics` of the training cells.
    batch_stats
        The same statistics of each batch's training cells, one per batch code.
    prior_cells
        Cells' worth of evidence for "no shift"; ``0`` gives the raw shifts.

    Returns
    -------
    torch.Tensor
        (2, n_batch, n_genes): row 0 the shift of the mean over cells where the gene is
        detected (the ``QUERY_EXPRESSED`` query type; 0 for a gene the batch never
        detects), row 1 the shift of the mean over all cells (``QUERY_ANY``).
    """
    mean = torch.as_tensor(stats.mean, dtype=torch.float32)
    std = torch.as_tensor(stats.std, dtype=torch.float32)
    expressed = torch.as_tensor(stats.expressed_mean, dtype=torch.float32)
    shifts = []
    for batch in batch_stats:
        b_mean = torch.as_tensor(batch.mean, dtype=torch.float32)
        b_std = torch.as_tensor(batch.std, dtype=torch.float32)
        # the batch's mean log level where detected, back from its own processed units
        b_log = (torch.as_tensor(batch.expressed_mean, dtype=torch.float32) - 1) * b_std + b_mean
        detected = torch.as_tensor(batch.detection_rate, dtype=torch.float32) * batch.n_cells
        shift_expressed = torch.where(detected > 0, (b_log - mean) / std + 1 - expressed, 0.0)
        shift_any = (b_mean - mean) / std
        shifts.append(
            torch.stack(
                [
                    shift_expressed * detected / (detected + prior_cells),
                    shift_any * batch.n_cells / (batch.n_cells + prior_cells),
                ]
            )
        )
    return torch.stack(shifts, dim=1)


def _scatter_where(
    x: torch.Tensor, pos: torch.Tensor, where: torch.Tensor, fill: float | bool
) -> torch.Tensor:
    """Copy of ``x`` with ``x[i, pos[i, j]] = fill`` wherever ``where[i, j]``."""
    current = x.gather(1, pos)
    return x.scatter(1, pos, torch.where(where, torch.full_like(current, fill), current))
