"""Server-side meta-training (torch): inner loop, algorithms, trainer, evaluation, export."""
