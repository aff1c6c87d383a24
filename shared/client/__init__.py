"""The producers' client: submit, status, wait, fetch. Importable without the worker."""
