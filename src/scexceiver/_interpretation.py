"""Interpretation readouts: encoder attention per cell and gene-embedding neighbours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._write import store


def get_attention(
    model,
    adata: AnnData | None = None,
    *,
    groupby: str | None = None,
    batch_size: int | None = None,
    key_added: str = "exceiver_attention",
    overwrite: bool = False,
) -> sparse.csr_matrix:
    """Encoder cross-attention from the latents to each cell's expressed genes.

    For every cell, the attention weights of the encoder's cross-attention (latent
    queries over the cell's gene tokens, nothing masked) are averaged over heads and
    latents and renormalised over the cell's expressed genes: a per-cell x gene
    importance whose row sums to 1 over the genes the cell expresses and is zero
    elsewhere. Cells are processed minibatch by minibatch, so memory grows with the
    number of expressed genes, never with cells x genes x latents.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    adata
        AnnData set up like the training data; ``None`` uses the model's.
    groupby
        ``obs`` column of cell groups (e.g. cell types). When given, the mean importance
        of each gene over the cells of each group is also written.
    batch_size
        Minibatch size; ``None`` uses scvi-tools' default.
    key_added
        Where results are written: ``adata.layers[key_added]`` (cells x genes CSR) and,
        with ``groupby``, ``adata.varm[f"{key_added}_{groupby}"]`` (genes x groups
        DataFrame of mean importance; a gene a cell does not express counts as 0).
    overwrite
        Replace existing results under these keys.

    Returns
    -------
    scipy.sparse.csr_matrix
        The (cells, genes) importance written to ``adata.layers[key_added]``.

    Examples
    --------
    >>> scexceiver.tl.get_attention(model, adata, groupby="cell_type")
    >>> adata.varm["exceiver_attention_cell_type"]["B"].nlargest(10)
    """
    adata = model.adata if adata is None else adata
    group_key = None if groupby is None else f"{key_added}_{groupby}"
    if groupby is not None and groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs.")
    for attr, key in (("layers", key_added), ("varm", group_key)):
        if key is not None and key in getattr(adata, attr) and not overwrite:
            raise KeyError(
                f"adata.{attr}[{key!r}] already exists; pass overwrite=True or another key_added."
            )
    adata, loader = model._inference_loader(adata, None, batch_size)
    rows, cols, vals = [], [], []
    start = 0
    for tensors in loader:
        attention = model.module.encoder_attention(tensors)
        expressed = attention["expressed"].cpu()
        row, _ = expressed.nonzero(as_tuple=True)
        rows.append(row.numpy() + start)
        cols.append(attention["gene_idx"].cpu()[expressed].numpy())
        vals.append(attention["weights"].cpu()[expressed].numpy())
        start += expressed.shape[0]
    importance = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(adata.n_obs, adata.n_vars),
        dtype=np.float32,
    )
    store(adata, "layers", key_added, importance, overwrite)
    if groupby is not None:
        store(adata, "varm", group_key, group_mean(importance, adata, groupby), overwrite)
    return importance


def group_mean(matrix: sparse.spmatrix, adata: AnnData, groupby: str) -> pd.DataFrame:
    """Mean of each column of a (cells, genes) matrix over the cells of each group.

    Parameters
    ----------
    matrix
        (cells, genes) values aligned with ``adata``.
    adata
        AnnData whose ``obs[groupby]`` holds the groups and ``var_names`` the genes.
    groupby
        ``obs`` column of groups.

    Returns
    -------
    pandas.DataFrame
        Genes x groups, indexed by ``adata.var_names``.
    """
    groups = pd.Categorical(adata.obs[groupby])
    labelled = np.flatnonzero(groups.codes >= 0)
    indicator = sparse.csr_matrix(
        (np.ones(labelled.size), (groups.codes[labelled], labelled)),
        shape=(len(groups.categories), adata.n_obs),
    )
    sizes = np.asarray(indicator.sum(1)).ravel()
    present = np.flatnonzero(sizes)
    means = np.asarray((indicator[present] @ matrix).todense()) / sizes[present, None]
    return pd.DataFrame(
        means.T, index=adata.var_names.copy(), columns=list(groups.categories[present])
    )


def rank_attention(group_means: pd.DataFrame) -> dict[str, list[str]]:
    """Genes ranked, per group, by how specifically the group attends to them.

    The score of gene ``g`` in group ``k`` is ``m_gk * log(m_gk / mean_k' m_gk')``, with
    ``m`` the mean attention per group: the gene's contribution to the divergence of the
    group's attention from the average over groups. It is high for genes the group
    attends to strongly *and* more than the other groups do.

    Parameters
    ----------
    group_means
        Genes x groups mean attention, as written by :func:`get_attention` with
        ``groupby`` (``adata.varm[f"{key_added}_{groupby}"]``).

    Returns
    -------
    dict
        For each group, gene names from the highest score down (genes the group never
        attends to are left out).
    """
    values = group_means.to_numpy(dtype=float)
    average = values.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(values > 0, values * np.log(values / average), -np.inf)
    ranked = {}
    for k, group in enumerate(group_means.columns):
        order = np.argsort(-score[:, k], kind="stable")
        order = order[np.isfinite(score[order, k])]
        ranked[group] = list(group_means.index[order])
    return ranked


def gene_similarity(model, genes: Sequence[str] | None = None) -> pd.DataFrame:
    """Cosine similarity between gene embeddings.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    genes
        Gene keys (the model's ``var_names`` or ``gene_key`` values); all genes of the
        vocabulary by default (memory grows with its square).

    Returns
    -------
    pandas.DataFrame
        Genes x genes cosine similarities.
    """
    keys = list(model.gene_vocabulary_.keys) if genes is None else list(genes)
    unit = _unit_embeddings(model, keys)
    return pd.DataFrame(unit @ unit.T, index=keys, columns=keys)


def gene_neighbors(model, gene: str, n: int = 10) -> pd.DataFrame:
    """The genes whose embeddings are most similar (cosine) to ``gene``'s.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    gene
        A gene key of the model's vocabulary, e.g. ``"CD3E"``.
    n
        Number of neighbours.

    Returns
    -------
    pandas.DataFrame
        ``n`` rows, most similar first, indexed by gene key, with column ``cosine``;
        ``gene`` itself is left out.

    Examples
    --------
    >>> scexceiver.tl.gene_neighbors(model, "CD3E", n=5)
    """
    keys = list(model.gene_vocabulary_.keys)
    unit = _unit_embeddings(model, keys)
    query = unit[gene_positions(model, [gene])[0]]
    cosine = unit @ query
    cosine[keys.index(str(gene))] = -np.inf
    top = np.argsort(-cosine, kind="stable")[:n]
    return pd.DataFrame(
        {"cosine": cosine[top]}, index=pd.Index([keys[i] for i in top], name="gene")
    )


def gene_positions(model, genes: Sequence[str]) -> np.ndarray:
    """Vocabulary positions of gene keys; a clear error names any unknown gene."""
    positions = model.gene_vocabulary_.positions(genes)
    if (positions < 0).any():
        missing = [g for g, p in zip(genes, positions, strict=True) if p < 0]
        raise KeyError(
            f"Gene(s) not in the model's vocabulary: {missing[:10]}. Use the model's gene "
            "keys (model.gene_vocabulary_.keys: var_names or the gene_key column)."
        )
    return positions


def _unit_embeddings(model, genes: Sequence[str]) -> np.ndarray:
    table = model.module.network.gene_embedding.weight.detach().float().cpu().numpy()
    rows = table[gene_positions(model, genes)]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
