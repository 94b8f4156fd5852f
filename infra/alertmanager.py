"""Alertmanager routing from a stack's receivers: an AlertmanagerConfig with its Secret, and a native
alertmanager.yml with the same routes.

Credentials never appear in these objects: the AlertmanagerConfig names keys of the Secret, whose
values render writes as placeholders and the Pulumi program fills from `pulumi config set --secret`;
alertmanager.yml reads each one from the file the mounted Secret gives it (`*_file` fields, at
`contract.secret_file`), so it passes `amtool check-config` as rendered.
"""

from __future__ import annotations

from infra.common import MANAGED_BY, STACK_LABEL, Obj, metadata, secret_placeholder
from modelctl.core.contract import ALERTING_SECRET, secret_file
from modelctl.core.schema import EmailReceiver, Receiver, SlackReceiver, WebhookReceiver
from modelctl.core.state import Stack

SECRET_NAME = ALERTING_SECRET
CONFIG_NAME = "modelctl-alerts"
NULL_RECEIVER = "null"
GROUP_BY = ["alertname", "model", "version"]
TIMING = {"group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}
# Alertmanager's default Slack text (template "slack.default.text") is empty, so a message would
# carry only its title; this one gives each alert's summary, description and runbook, the
# annotations every rule has (infra/alert_rules.py). Go template syntax, checked by amtool.
SLACK_TEXT = (
    "{{ range .Alerts }}*{{ .Annotations.summary }}*\n{{ .Annotations.description }}\n"
    "Runbook: {{ .Annotations.runbook_url }}\n{{ end }}"
)


def _labels(stack: Stack) -> dict[str, str]:
    return {**MANAGED_BY, STACK_LABEL: stack.name}


def secret_keys(stack: Stack) -> list[str]:
    """Config keys the receivers need, in order of first use."""
    keys = [key for receiver in stack.config.environment.receivers for key in receiver.secret_keys()]
    return list(dict.fromkeys(keys))


def secret(stack: Stack) -> Obj | None:
    keys = secret_keys(stack)
    if not keys:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(SECRET_NAME, stack.config.environment.namespace, _labels(stack)),
        "type": "Opaque",
        "stringData": {key: secret_placeholder(key) for key in keys},
    }


def alertmanager_config(stack: Stack) -> Obj | None:
    receivers = stack.config.environment.receivers
    if not receivers:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": metadata(CONFIG_NAME, stack.config.environment.namespace, _labels(stack)),
        "spec": {
            "route": {
                "receiver": NULL_RECEIVER,
                "groupBy": GROUP_BY,
                "groupWait": TIMING["group_wait"],
                "groupInterval": TIMING["group_interval"],
                "repeatInterval": TIMING["repeat_interval"],
                "routes": [
                    {
                        "receiver": receiver.name,
                        "matchers": [{"name": "severity", "matchType": "=~", "value": _severities(receiver)}],
                        "continue": True,
                    }
                    for receiver in receivers
                ],
            },
            "receivers": [{"name": NULL_RECEIVER}, *(_cr_receiver(r) for r in receivers)],
        },
    }


def _severities(receiver: Receiver) -> str:
    return "|".join(receiver.severities)


def _key_ref(key: str) -> Obj:
    return {"name": SECRET_NAME, "key": key}


def _cr_receiver(receiver: Receiver) -> Obj:
    if receiver.email:
        return {"name": receiver.name, "emailConfigs": [_cr_email(receiver.email)]}
    if receiver.slack:
        return {"name": receiver.name, "slackConfigs": [_cr_slack(receiver.slack)]}
    assert receiver.webhook is not None  # the schema requires exactly one kind
    return {"name": receiver.name, "webhookConfigs": [_cr_webhook(receiver.webhook)]}


def _cr_email(email: EmailReceiver) -> Obj:
    config: Obj = {
        "to": email.to,
        "from": email.from_,
        "smarthost": email.smarthost,
        "requireTLS": email.require_tls,
        "sendResolved": True,
    }
    if email.auth_username:
        config["authUsername"] = email.auth_username
    if email.auth_password_secret:
        config["authPassword"] = _key_ref(email.auth_password_secret)
    return config


def _cr_slack(slack: SlackReceiver) -> Obj:
    return {
        "apiURL": _key_ref(slack.api_url_secret),
        "channel": slack.channel,
        "text": SLACK_TEXT,
        "sendResolved": True,
    }


def _cr_webhook(webhook: WebhookReceiver) -> Obj:
    config: Obj = {"url": webhook.url, "sendResolved": True}
    if webhook.credentials_secret:
        config["httpConfig"] = {
            "authorization": {"type": "Bearer", "credentials": _key_ref(webhook.credentials_secret)}
        }
    return config


def native_config(stack: Stack) -> Obj:
    """The same routing as a plain alertmanager.yml (Alertmanager 0.25's format), every credential
    read from the Secret's file (`contract.secret_file`)."""
    receivers = stack.config.environment.receivers
    namespace = stack.config.environment.namespace
    return {
        "route": {
            "receiver": NULL_RECEIVER,
            "group_by": GROUP_BY,
            **TIMING,
            "routes": [
                {
                    "receiver": receiver.name,
                    "matchers": [f'namespace="{namespace}"', f'severity=~"{_severities(receiver)}"'],
                    "continue": True,
                }
                for receiver in receivers
            ],
        },
        "receivers": [{"name": NULL_RECEIVER}, *(_native_receiver(r) for r in receivers)],
    }


def _native_receiver(receiver: Receiver) -> Obj:
    if receiver.email:
        return {"name": receiver.name, "email_configs": [_native_email(receiver.email)]}
    if receiver.slack:
        slack = receiver.slack
        config = {
            "channel": slack.channel,
            "api_url_file": secret_file(slack.api_url_secret),
            "text": SLACK_TEXT,
            "send_resolved": True,
        }
        return {"name": receiver.name, "slack_configs": [config]}
    assert receiver.webhook is not None  # the schema requires exactly one kind
    webhook: Obj = {"url": receiver.webhook.url, "send_resolved": True}
    if receiver.webhook.credentials_secret:
        credentials = secret_file(receiver.webhook.credentials_secret)
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": credentials}}
    return {"name": receiver.name, "webhook_configs": [webhook]}


def _native_email(email: EmailReceiver) -> Obj:
    config: Obj = {
        "to": email.to,
        "from": email.from_,
        "smarthost": email.smarthost,
        "require_tls": email.require_tls,
        "send_resolved": True,
    }
    if email.auth_username:
        config["auth_username"] = email.auth_username
    if email.auth_password_secret:
        config["auth_password_file"] = secret_file(email.auth_password_secret)
    return config
