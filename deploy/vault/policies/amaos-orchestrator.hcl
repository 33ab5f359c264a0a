# The orchestrator: the transit key that wraps its at-rest master keys
# (orchestrator.key_file).
path "transit/encrypt/amaos" {
  capabilities = ["update"]
}

path "transit/decrypt/amaos" {
  capabilities = ["update"]
}
