# The Vault / OpenBao policy a chassis host's token (or AppRole) needs, and
# no more. Load it with
#   bao policy write chassis-host deploy/vault/chassis-host.hcl
# (or `vault policy write ...`), and give the host a token or AppRole role
# with only this policy (no_default_policy = true is enough).
#
# Narrow the two grants below to the paths your chassis policies name: the
# host reads whatever its policies grant, so this is the outer fence. The
# secret tests (host/tests/secrets_vault.rs) run with a token that holds
# only this file, so every capability here is one chassis uses.

# KV v2 secrets granted to guests (`[secrets.x] path = "secret/chassis/..."`).
path "secret/data/chassis/*" {
  capabilities = ["read"]
}

# Dynamic database credentials (`path = "database/creds/chassis-..."`,
# `dynamic = true`): one lease per run.
path "database/creds/chassis-*" {
  capabilities = ["read"]
}

# Cut a new lease to the run's deadline, and revoke it when the run ends.
# chassis names the lease in the URL, so these grants cover the leases of
# the roles above and no one else's.
path "sys/leases/renew/database/creds/chassis-*" {
  capabilities = ["update"]
}
path "sys/leases/revoke/database/creds/chassis-*" {
  capabilities = ["update"]
}

# Check and renew its own token (AppRole logins need no grant).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
