"""Sharded multi-process training on torch.distributed (``torchrun --nproc_per_node=N -m gs_trainer.train``).

Each rank owns a contiguous 1/N slice of the Gaussians with their Adam state, projects its slice for every
camera of the batch, and ships each camera's visible projected rows to the rank that renders that camera
(all-to-all); the 2D gradients come back the same way.  See docs/SCALING.md.

* ``comm``: the process group (NCCL on CUDA, gloo on CPU, timeouts) and the differentiable row exchange.
* ``shard``: shard bounds, order-preserving repartition of rows, gathering shards into one model / state.
* ``trainer``: ``DistributedTrainer`` (a Trainer whose model is a shard), the sharded densification,
  and the sink that lets rank 0 alone write the run folder.
"""
