"""The CrossGuard pack: `pulumi preview --policy-pack policies/`. The rules live in policies/rules.py."""

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.pack import PACK_NAME, pack_policies

PolicyPack(name=PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=pack_policies())
