"""`llamakit run`: recipe -> validated plan -> torchrun -> per-rank worker -> engine -> resumable JSONL output."""
