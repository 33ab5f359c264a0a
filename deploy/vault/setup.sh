#!/usr/bin/env bash
# Configures Vault for AMAOS: the KV v2 and transit mounts, the transit key
# that wraps the services' at-rest master keys, the audit trail key, one
# policy and one Kubernetes-auth role per service, each role bound to that
# service's ServiceAccount only. Run once with a token allowed to do all of
# it (VAULT_ADDR and VAULT_TOKEN set), from a machine with the vault CLI.
#
#   deploy/vault/setup.sh [namespace]     # default: amaos
#
# The services log in with `vault_auth = "kubernetes"`: each pod presents a
# projected ServiceAccount token with audience `vault`
# (secrets.vault_kubernetes_jwt) to the role named after its ServiceAccount
# (AMAOS_SECRETS__VAULT_KUBERNETES_ROLE, set from the pod's label in
# deploy/k8s/components/backends). Vault must be able to review those tokens:
# configure auth/kubernetes/config with the cluster's API address and CA
# (Vault inside the cluster finds them itself).
set -euo pipefail
cd "$(dirname "$0")"
ns="${1:-amaos}"

vault secrets list -format=json | grep -q '"secret/"' || vault secrets enable -path=secret kv-v2
vault secrets list -format=json | grep -q '"transit/"' || vault secrets enable transit
vault read transit/keys/amaos >/dev/null 2>&1 || vault write -f transit/keys/amaos type=aes256-gcm96
# The audit trail key: written once, never rotated by this script (a new key
# starts new chains; see README, "Security model today").
vault kv get secret/audit/hmac-key >/dev/null 2>&1 \
  || vault kv put secret/audit/hmac-key value="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

vault auth list -format=json | grep -q '"kubernetes/"' || vault auth enable kubernetes

vault policy write amaos-common policies/amaos-common.hcl
# No role for the REST gateway (amaos-gateway): it reads no secret — it
# passes each client's own credential through, proves itself with its
# ServiceAccount (Linkerd) or its certificate (rustls), seals nothing and
# writes no audit trail, so it needs neither the audit key of amaos-common
# nor a Vault token (its pods mount none). Give it a role only if that
# changes.
for svc in orchestrator router agents tools memory auth; do
  vault policy write "amaos-$svc" "policies/amaos-$svc.hcl"
  vault write "auth/kubernetes/role/amaos-$svc" \
    bound_service_account_names="amaos-$svc" \
    bound_service_account_namespaces="$ns" \
    audience=vault \
    token_policies="amaos-common,amaos-$svc" \
    token_ttl=1h token_max_ttl=24h
done
echo "vault: AMAOS roles amaos-{orchestrator,router,agents,tools,memory,auth} in namespace $ns"
