"""DVC stage code: prepare → train → evaluate → profile, once per model in params.yaml."""
