"""The worker side: developing one individual (`develop.Developer`: synthesize, train, measure,
checkpoint) and the weights it loads (`weights`: ancestor files, parents, the root's initial
weights). Plain Python, no Ray: every executor holds one `Developer` per worker."""
