"""The router sidecar (student first, teacher when unsure) and `kubedistill serve`."""
