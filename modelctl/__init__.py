"""modelctl: the desired state of model delivery, validated; the core every shell reads."""
