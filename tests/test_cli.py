import json

import anndata as ad
import pytest

from scexceiver.cli import main


def test_demo_writes_results_pictures_and_model(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "1"]) == 0
    files = ("umap.png", "training.png", "report.txt", "report.json", "model/model.safetensors")
    for name in files:
        assert (out / name).stat().st_size > 0
    adata = ad.read_h5ad(out / "pbmc3k_exceiver.h5ad")
    assert adata.obsm["X_exceiver"].shape == (2700, 16 * 64)
    assert adata.varm["exceiver_gene_embedding"].shape == (32738, 64)
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["knn_accuracy_pca"] <= 1
    assert report["validation_masked_mse"] > 0
    assert "PCA on HVGs" in (out / "report.txt").read_text()


def test_usage_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["demo"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    assert "demo" in capsys.readouterr().out
