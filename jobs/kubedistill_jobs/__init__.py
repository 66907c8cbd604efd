"""The distillation pipeline: runs as the RayJob entrypoint and under `kubedistill run`."""
