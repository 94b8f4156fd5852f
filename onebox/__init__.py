"""The local stack: the rendered Kubernetes objects of one stack run on one machine.

Model servers from the rendered Deployments (a pod per replica, restarted by a supervisor as the
kubelet would), Envoy translating the rendered VirtualService and DestinationRule as istiod
does, Prometheus from the ServiceMonitor and PrometheusRule (and Envoy's own statistics),
Alertmanager from the rendered alertmanager.yml delivering to a local mailbox. A shell: it takes the objects `infra`
builds and imports no other shell.
"""
