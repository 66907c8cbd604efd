"""Local serving: the `tritonserver` binary from the nvidia-pytriton wheel, a python-backend copy of the
model repository, and `kubedistill serve`. The cluster never runs this code."""
