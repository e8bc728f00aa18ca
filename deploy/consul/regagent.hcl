# Consul ACL policy for regagent (every host's agent):
#   consul acl policy create -name regagent -rules @regagent.hcl
#   consul acl token create -description "regagent fleet" -policy-name regagent
# Put the token's SecretID in /etc/regagent/consul.token (mode 0600, owner regagent) and set
# consul.token_file to it.
#
# A catalog registration of an external node needs node:write on the node (first
# registration, node address or meta changes) and service:write on each service name.
# The fleet-wide form below lets one token serve every host. To confine a leaked token to its
# own host, give each host its own policy with `node "<hostname>"` instead of `node_prefix ""`
# (service:write is per service NAME in Consul, so it cannot be narrowed to one host's
# services; node:write on other hosts is what stops a token from changing them).

node_prefix "" {
  policy = "write"
}

service_prefix "" {
  policy = "write"
}

# The dead-man's switch (consul.session, on by default in catalog mode): each daemon creates,
# renews and destroys a session on its own node. Confine it like node_prefix above
# (`session "<hostname>"`) for a per-host token.
session_prefix "" {
  policy = "write"
}

# Only for consul.mode = agent (hosts with a local Consul agent): /v1/agent/self.
agent_prefix "" {
  policy = "read"
}
