"""What the experiment runs in containers: the LLaMA-Factory training of each level, its
model server, the GPU leases they share, and the same containers as ``docker`` commands."""
