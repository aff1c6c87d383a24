"""Plain data every layer shares: attempt records and outcomes, the documents written to blobs
(manifest, error, status), and what an image's bytes say about themselves. No I/O."""
