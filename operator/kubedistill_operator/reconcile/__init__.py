"""Plain reconcile functions: read the world through KubeApi, build with the pure builders, write status.

kopf's handlers (handlers.py) only call into here; waiting is a `kopf.TemporaryError` with a delay, a spec
that can never work a `kopf.PermanentError`. A StudentDeployment waiting for its job ends its handler instead: the
job's events wake it.
"""
