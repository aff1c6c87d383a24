"""Blob and Queue Storage: the request folder's blobs and lease, the shared quota blob, clients."""
