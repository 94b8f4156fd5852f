"""Policies over rendered Kubernetes objects, shared by the CrossGuard pack and `modelctl check`."""
