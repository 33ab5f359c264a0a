# Every AMAOS service: the audit trail key (KV v2 `secret`, field `value`,
# at least 32 bytes) and its own token's upkeep (vaultrs renews at two
# thirds of the lease).
path "secret/data/audit/hmac-key" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
