"""One training loop (with callbacks) for every phase that trains weights: dense pretraining, IMP levels,
retraining of tickets and sanity variants."""
