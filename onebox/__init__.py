"""The local stack: the rendered Kubernetes objects of one stack run on one machine.

Model servers from the rendered Deployments, nginx translating the rendered VirtualService and
DestinationRule, Prometheus from the ServiceMonitor and PrometheusRule, Alertmanager from the
rendered alertmanager.yml delivering to a local mailbox. A shell: it takes the objects `infra`
builds and imports no other shell.
"""
