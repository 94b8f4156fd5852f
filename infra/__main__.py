"""Pulumi's entry point (`main: infra/` in Pulumi.yaml); the program itself is `infra.program`."""

from infra.program import main

main()
