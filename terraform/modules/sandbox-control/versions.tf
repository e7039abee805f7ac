terraform {
  # optional() object attributes with defaults (1.3); the tests use mock providers (1.7).
  required_version = ">= 1.3.0"
}
