# Agents workers: model providers' API keys ([models.<alias>] api_key_secret,
# by convention under llm/).
path "secret/data/llm/*" {
  capabilities = ["read"]
}
