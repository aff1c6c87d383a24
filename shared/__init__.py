"""The app's core: settings, contract, SSE decoding, the image API, retry policy, storage, pipeline."""
