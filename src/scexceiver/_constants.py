"""Names of the tensors a tokenised minibatch carries (shared by ``data`` and ``module``)."""

GENE_IDX = "gene_idx"
COUNTS = "counts"
TOKEN_MASK = "token_mask"
LIBRARY_SIZE = "library_size"
GENE_PANEL = "gene_panel"
MEASURED_GENES = "measured_genes"
