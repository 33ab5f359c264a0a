# The auth reads nothing beyond amaos-common (the audit key). Kept as a file
# so every service has its own policy to grow.
path "secret/data/amaos/auth/*" {
  capabilities = ["read"]
}
