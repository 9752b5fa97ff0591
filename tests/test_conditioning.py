import torch

from scexceiver.module import BatchConditioning, Exceiver


def test_starts_as_the_identity_and_learns_state_dependent_batch_effects():
    torch.manual_seed(0)
    conditioning = BatchConditioning(8, n_batch=3, hidden=16)
    latents = torch.randn(2, 4, 8)
    batch = torch.tensor([[0], [2]])
    torch.testing.assert_close(conditioning(latents, batch), latents)
    torch.nn.init.normal_(conditioning.out.weight)
    # the same latents in two batches: the batch moves them
    pair = latents[:1].expand(2, -1, -1)
    moved = conditioning(pair, torch.tensor([[0], [1]]))
    assert (moved[0] - moved[1]).abs().min() > 0
    # and by how much depends on the latent (not one offset per batch, as a bias)
    effect = conditioning(latents, torch.tensor([[1], [1]])) - conditioning(
        latents, torch.tensor([[0], [0]])
    )
    assert (effect[0] - effect[1]).abs().max() > 0.1


def test_decoder_reads_conditioned_latents_only_with_two_batches():
    torch.manual_seed(0)
    kwargs = {"n_latents": 4, "dim": 8, "n_layers": 1, "ff_dim": 16, "n_batch": 2}
    network = Exceiver(10, batch_context=True, **kwargs)
    assert isinstance(network.batch_context, BatchConditioning)
    assert Exceiver(10, batch_context=True, n_batch=1).batch_context is None
    latents = torch.randn(2, 4, 8)
    query = torch.randint(0, 10, (2, 5))
    batch = torch.tensor([[0], [1]])
    before = network.decode(latents, query, batch)
    torch.nn.init.normal_(network.batch_context.out.weight)
    after = network.decode(latents, query, batch)
    assert (after - before).abs().max() > 1e-3
    # the conditioning is what changed: without batches the decoder reads raw latents
    network.batch_context = None
    torch.testing.assert_close(network.decode(latents, query, batch), before)
