"""The worker side: developing one individual (`develop.Developer`: synthesize, train, measure,
checkpoint). Plain Python, no Ray: every executor holds one `Developer` per worker."""
