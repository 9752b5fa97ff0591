import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scexceiver
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
    assert report["validation_masked_mse"] > 0 and report["validation_masked_mse_log"] > 0
    assert "PCA on HVGs" in (out / "report.txt").read_text()


def test_usage_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["demo"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    assert "demo" in capsys.readouterr().out


@pytest.fixture(scope="module")
def h5ad_files(pbmc_small, tmp_path_factory):
    """Two real h5ad files of 150 cells, the second on a shuffled subset of the genes."""
    folder = tmp_path_factory.mktemp("cli_data")
    first, second = pbmc_small[:150].copy(), pbmc_small[150:300].copy()
    rng = np.random.default_rng(0)
    second = second[:, rng.permutation(second.n_vars)[:2900]].copy()
    first.layers["counts"] = first.X.copy()
    second.layers["counts"] = second.X.copy()
    second.X = None
    paths = {"first": folder / "first.h5ad", "second": folder / "second.h5ad"}
    first.write_h5ad(paths["first"])
    second.write_h5ad(paths["second"])
    return paths


@pytest.fixture(scope="module")
def pretrained(h5ad_files, pbmc_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_model") / "model"
    files = [str(h5ad_files["first"]), str(h5ad_files["second"])]
    options = ["--layer", "counts", "--gene-key", "gene_ids", "--batch-key", "source_file"]
    training = ["--max-epochs", "1", "--no-early-stopping", "--accelerator", "cpu"]
    code = main(["pretrain", *files, "--out", str(out), *options, *training])
    assert code == 0
    return out


def test_pretrain_on_two_files_then_embed_writes_obsm_and_varm(
    pretrained, h5ad_files, pbmc_small, tmp_path, capsys
):
    data = tmp_path / "pbmc_small.h5ad"
    adata = pbmc_small[:300].copy()
    adata.obs["source_file"] = str(h5ad_files["first"])
    adata.write_h5ad(data)
    out = tmp_path / "embedded.h5ad"
    assert main(["embed", str(pretrained), str(data), "--out", str(out), "--layer", "c"]) == 2
    assert "no layer 'c'" in capsys.readouterr().err
    assert main(["embed", str(pretrained), str(data), "--out", str(out)]) == 0
    assert "2,900 shared genes: 96.7% of the data" in capsys.readouterr().out

    result = ad.read_h5ad(out)
    assert result.obs_names.equals(adata.obs_names)
    latents = result.obsm["X_exceiver"]
    assert latents.shape == (300, 16 * 64)
    assert np.isfinite(latents).all() and latents.std(0).mean() > 0
    genes = result.varm["exceiver_gene_embedding"]
    assert genes.shape == (3000, 64)
    second = ad.read_h5ad(h5ad_files["second"], backed="r")
    known = adata.var["gene_ids"].isin(second.var["gene_ids"]).to_numpy()
    assert np.isfinite(genes[known]).all() and np.isnan(genes[~known]).all()
    assert "X_exceiver" not in ad.read_h5ad(data).obsm  # the input is untouched

    # genes are matched by key, not by position: shuffling the columns changes nothing
    shuffled = adata[:, np.random.default_rng(1).permutation(adata.n_vars)].copy()
    shuffled.write_h5ad(tmp_path / "shuffled.h5ad")
    out2 = tmp_path / "shuffled_embedded.h5ad"
    assert (
        main(["embed", str(pretrained), str(tmp_path / "shuffled.h5ad"), "--out", str(out2)]) == 0
    )
    again = ad.read_h5ad(out2)
    np.testing.assert_allclose(again.obsm["X_exceiver"], latents, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        again.varm["exceiver_gene_embedding"],
        pd.DataFrame(genes, index=result.var_names).loc[again.var_names].to_numpy(),
    )

    # existing keys and files are kept unless --overwrite
    assert main(["embed", str(pretrained), str(out), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert main(["embed", str(pretrained), str(data), "--out", str(out)]) == 2
    assert main(["embed", str(pretrained), str(data), "--out", str(data), "--overwrite"]) == 2
    assert main(["embed", str(pretrained), str(data), "--out", str(out), "--overwrite"]) == 0


def test_embed_refuses_data_without_the_models_genes(
    pretrained, h5ad_files, pbmc_small, tmp_path, capsys
):
    data = tmp_path / "symbols.h5ad"
    adata = pbmc_small[:50].copy()
    adata.obs["source_file"] = "x"
    adata.write_h5ad(data)
    args = ["embed", str(pretrained), str(data), "--out", str(tmp_path / "o.h5ad")]
    assert main(args) == 2
    assert "categories the model was not trained on" in capsys.readouterr().err
    adata.obs["source_file"] = str(h5ad_files["second"])
    adata.write_h5ad(data)
    # the model knows Ensembl IDs; var_names are symbols
    assert main([*args, "--gene-key", "gene_symbols"]) == 2
    assert "--gene-key" in capsys.readouterr().err
    assert main([*args, "--gene-key", "nope"]) == 2
    assert main([*args[:2], str(tmp_path), *args[3:]]) == 2  # not an h5ad
    assert main([*args[:1], str(tmp_path), *args[2:]]) == 2  # not a model folder


def test_pretrain_usage_errors_exit_2_before_training(h5ad_files, tmp_path, capsys):
    first, out = str(h5ad_files["first"]), str(tmp_path / "m")
    assert main(["pretrain", str(tmp_path / "missing.h5ad"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["pretrain", first, first, "--out", out]) == 2
    assert "more than once" in capsys.readouterr().err
    assert main(["pretrain", first, "--out", out, "--layer", "nope"]) == 2
    assert "layer 'nope'" in capsys.readouterr().err
    assert main(["pretrain", first, "--out", out, "--gene-key", "nope"]) == 2
    assert main(["pretrain", first, "--out", out, "--batch-key", "nope"]) == 2
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    assert main(["pretrain", first, "--out", out]) == 2
    assert "not empty" in capsys.readouterr().err
    for bad in (["--preset", "nope"], ["--devices", "x"], ["--max-epochs", "two"]):
        with pytest.raises(SystemExit) as err:
            main(["pretrain", first, "--out", out, *bad])
        assert err.value.code == 2


def test_failure_while_running_exits_1(h5ad_files, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    out = str(tmp_path / "m")
    code = main(["pretrain", str(h5ad_files["first"]), "--out", out, "--accelerator", "gpu"])
    assert code == 1
    assert "failed" in capsys.readouterr().err


def test_entry_point_in_a_subprocess(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "scexceiver.cli", "embed", "m", "x.h5ad", "--out", "o.h5ad"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr


def test_every_subcommand_has_help(capsys):
    for command in ("pretrain", "embed", "demo"):
        with pytest.raises(SystemExit) as err:
            main([command, "--help"])
        assert err.value.code == 0
        assert "--out" in capsys.readouterr().out


def test_pretrain_on_disk_streams_a_corpus_of_all_genes(h5ad_files, tmp_path, capsys):
    files = [str(h5ad_files["first"]), str(h5ad_files["second"])]
    corpus, out = tmp_path / "corpus.h5ad", tmp_path / "model"
    options = ["--layer", "counts", "--gene-key", "gene_ids", "--batch-key", "source_file"]
    training = ["--max-epochs", "1", "--no-early-stopping", "--accelerator", "cpu"]
    code = main(
        ["pretrain", *files, "--on-disk", str(corpus), "--out", str(out), *options, *training]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "read 300 cells x 3,000 genes from 2 file(s) (all files' genes, on disk" in printed
    backed = ad.read_h5ad(corpus, backed="r")
    assert backed.varm["source_file"].sum().to_dict() == {"first": 3000, "second": 2900}
    model = scexceiver.ExceiverModel.load(str(out))
    assert len(model.gene_vocabulary_) == 3000  # the union, not the 2,900 shared genes
    assert model.registry_["setup_args"]["gene_panel_key"] == "source_file"
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()

    bad, new_out = tmp_path / "bad.h5ad", str(tmp_path / "m2")
    on_disk = ["pretrain", files[0], "--out", new_out, "--on-disk"]
    assert main([*on_disk, str(bad), "--layer", "x"]) == 2
    assert "layer 'x'" in capsys.readouterr().err
    assert main([*on_disk, str(bad), "--gene-key", "x"]) == 2
    assert "--gene-key" in capsys.readouterr().err
    assert main([*on_disk, str(tmp_path / "c.zarr")]) == 2
    assert "must end in .h5ad" in capsys.readouterr().err
    assert not bad.exists()  # refused before anything is written
