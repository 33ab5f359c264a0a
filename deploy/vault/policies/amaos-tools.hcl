# Tools: MCP servers' credentials (secret_env, bearer_secret) — the
# platform's under mcp/, each tenant's under tenants/<tenant>/ (the service
# refuses a tenant's server any other path) — and the transit key that wraps
# the journal's master keys.
path "secret/data/mcp/*" {
  capabilities = ["read"]
}

path "secret/data/tenants/*" {
  capabilities = ["read"]
}

path "transit/encrypt/amaos" {
  capabilities = ["update"]
}

path "transit/decrypt/amaos" {
  capabilities = ["update"]
}
