# The memory: the transit key that wraps its at-rest master keys
# (memory.key_file).
path "transit/encrypt/amaos" {
  capabilities = ["update"]
}

path "transit/decrypt/amaos" {
  capabilities = ["update"]
}
