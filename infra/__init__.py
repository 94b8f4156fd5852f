"""Turn the validated desired state into Kubernetes objects.

The builders here are pure functions of `modelctl.core.state.State`; `infra.program` (run by
Pulumi through `__main__.py`) and `modelctl render` are the two shells that use them.
"""
